package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
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
		`{"Name":"web"}`, `{"name":"a","name":"b"}`, `{"set":{"A":"1","A":"2"}}`, `{"SET":{"A":"1"}}`,
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

// FuzzDecodeKeys ensures the decoders take field names exactly and
// refuse duplicate keys: whatever body a decoder accepts has no object
// with a key twice (checked by a walk of its own), and a struct's keys
// are exactly its JSON names, never a differently cased one.
func FuzzDecodeKeys(f *testing.F) {
	for _, seed := range []string{
		`{"name":"web"}`, `{"Name":"web"}`, `{"NAME":"web"}`, `{"name":"a","name":"b"}`, `{"name":"a","Name":"b"}`,
		`{"user":"x"}`, `{"User":"x"}`, `{"version":2}`, `{"Version":2,"version":2}`,
		`{"set":{"A":"1"},"unset":["B"]}`, `{"set":{"A":"1","A":"2"}}`, `{"Set":{"A":"1"}}`, `{"set":{"a":"1","A":"2"}}`,
		`{"unset":["A"],"unset":["B"]}`, `{"web":1,"web":2}`, `{"web":1,"Web":2}`, `{"set":{"A":"1"},"set":{"B":"2"}}`,
		`{"n\u0061me":"x"}`, `{"name":"x","n\u0061me":"y"}`, `{"set":{"\u0041":"1","A":"2"}}`,
	} {
		for kind := range uint8(5) {
			f.Add(kind, []byte(seed))
		}
	}
	exact := map[uint8][]string{0: {"name"}, 1: {"user"}, 2: {"version"}, 3: {"set", "unset"}}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		kind %= 5
		var err error
		switch kind {
		case 0:
			_, err = decodeCreateApp(bytes.NewReader(body))
		case 1:
			_, err = decodeSetUser(bytes.NewReader(body))
		case 2:
			_, err = decodeRollback(bytes.NewReader(body))
		case 3:
			_, err = decodeConfigChange(bytes.NewReader(body))
		case 4:
			_, err = decodeFormation(bytes.NewReader(body))
		}
		if err != nil {
			return
		}
		objects, ok := objectKeys(body)
		if !ok {
			return // an empty body some decoders accept
		}
		for i, keys := range objects {
			seen := map[string]bool{}
			for _, k := range keys {
				if seen[k] {
					t.Fatalf("kind %d accepted %q with key %q twice", kind, body, k)
				}
				seen[k] = true
			}
			if names := exact[kind]; i == 0 && names != nil {
				for _, k := range keys {
					if !slices.Contains(names, k) {
						t.Fatalf("kind %d accepted %q with key %q, not one of %v", kind, body, k, names)
					}
				}
			}
		}
	})
}

// objectKeys lists the keys of every object in the JSON value data, the
// outermost first, as the decoder unescapes them; ok is false when data
// holds no value.
func objectKeys(data []byte) (objects [][]string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		obj    int // index in objects, or -1 for an array
		expect bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return objects, len(objects) > 0 || ok
		}
		ok = true
		inKey := len(stack) > 0 && stack[len(stack)-1].obj >= 0 && stack[len(stack)-1].expect
		switch tok {
		case json.Delim('{'):
			if len(stack) > 0 && stack[len(stack)-1].obj >= 0 {
				stack[len(stack)-1].expect = true
			}
			objects = append(objects, nil)
			stack = append(stack, frame{obj: len(objects) - 1, expect: true})
			continue
		case json.Delim('['):
			if len(stack) > 0 && stack[len(stack)-1].obj >= 0 {
				stack[len(stack)-1].expect = true
			}
			stack = append(stack, frame{obj: -1})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			continue
		}
		if inKey {
			top := &stack[len(stack)-1]
			objects[top.obj] = append(objects[top.obj], tok.(string))
			top.expect = false
		} else if len(stack) > 0 && stack[len(stack)-1].obj >= 0 {
			stack[len(stack)-1].expect = true
		}
	}
}
