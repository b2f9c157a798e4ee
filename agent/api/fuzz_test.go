package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzDecode feeds arbitrary bodies to every request decoder of the API.
// A decoder must not panic, must refuse with ErrInvalid or ErrTooLarge,
// and what it accepts must survive a JSON round trip unchanged and obey
// the decoder's own checks.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"name":"web"}`, `{"user":"www-data"}`, `{"version":3}`, ``,
		`{"set":{"A":"1"},"unset":["B"]}`, `{"web":2,"worker":0}`,
		`{"name":"x","extra":1}`, `{"web":-1}`, `[1]`, `null`, `{"set":null}`,
		`{"name":"\u0000"} trailing`, `{"version":1e3}`, `{"web":9999999999999999999}`,
	} {
		for kind := range uint8(5) {
			f.Add(kind, []byte(seed))
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		var v any
		var err error
		switch kind % 5 {
		case 0:
			v, err = decodeCreateApp(bytes.NewReader(body))
			if err == nil && v.(CreateAppRequest).Name == "" {
				t.Fatal("accepted an empty name")
			}
		case 1:
			v, err = decodeSetUser(bytes.NewReader(body))
		case 2:
			v, err = decodeRollback(bytes.NewReader(body))
			if err == nil && v.(RollbackRequest).Version < 0 {
				t.Fatal("accepted a negative version")
			}
		case 3:
			var c ConfigChange
			c, err = decodeConfigChange(bytes.NewReader(body))
			v = c
			if err == nil && len(c.Set) == 0 && len(c.Unset) == 0 {
				t.Fatal("accepted an empty change")
			}
		case 4:
			var m map[string]int
			m, err = decodeFormation(bytes.NewReader(body))
			v = m
			for typ, n := range m {
				if err == nil && n < 0 {
					t.Fatalf("accepted count %d for %q", n, typ)
				}
			}
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v is neither ErrInvalid nor ErrTooLarge", err)
			}
			return
		}
		b, merr := json.Marshal(v)
		if merr != nil {
			t.Fatalf("re-encode %#v: %v", v, merr)
		}
		again := reflect.New(reflect.TypeOf(v))
		if err := decodeJSON(bytes.NewReader(b), again.Interface()); err != nil && err != io.EOF {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		if !reflect.DeepEqual(again.Elem().Interface(), v) {
			t.Fatalf("round trip changed %#v into %#v", v, again.Elem().Interface())
		}
	})
}
