package promtext

import (
	"bytes"
	"math"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parse reads the text format with Prometheus's own parser.
func parse(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the Prometheus parser refuses the output: %v\n%s", err, text)
	}
	return fams
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// TestWriter_ParsedByPrometheus ensures what Writer writes, label values
// that need escaping, special values and histograms included, reads back
// the same through expfmt.TextParser.
func TestWriter_ParsedByPrometheus(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf)
	w.Family("test_gauge", Gauge, "A gauge.\nWith a second line and a \\ backslash.")
	w.Sample("test_gauge", 1.5, "app", "hello", "odd", "quote \" backslash \\ newline \n end")
	w.Sample("test_gauge", math.Inf(1), "app", "inf")
	w.Sample("test_gauge", -3e-9, "app", "small")
	w.Family("test_total", Counter, "A counter without labels.")
	w.Sample("test_total", 42)
	h := NewHist([]float64{0.5, 1, 10})
	for _, v := range []float64{0.1, 0.7, 0.9, 5, 100} {
		h.Observe(v)
	}
	w.Family("test_seconds", Histogram, "A histogram.")
	w.Histogram("test_seconds", h.Snapshot(), "kind", "deploy")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	fams := parse(t, buf.String())

	g := fams["test_gauge"]
	if g.GetType() != dto.MetricType_GAUGE || g.GetHelp() != "A gauge.\nWith a second line and a \\ backslash." {
		t.Errorf("gauge family: %v %q", g.GetType(), g.GetHelp())
	}
	got := map[string]float64{}
	for _, m := range g.GetMetric() {
		l := labels(m)
		got[l["app"]] = m.GetGauge().GetValue()
		if l["app"] == "hello" && l["odd"] != "quote \" backslash \\ newline \n end" {
			t.Errorf("escaped label read back as %q", l["odd"])
		}
	}
	if got["hello"] != 1.5 || !math.IsInf(got["inf"], 1) || got["small"] != -3e-9 {
		t.Errorf("gauge values %v", got)
	}
	if c := fams["test_total"]; c.GetType() != dto.MetricType_COUNTER || c.GetMetric()[0].GetCounter().GetValue() != 42 {
		t.Errorf("counter: %v", c)
	}
	hf := fams["test_seconds"]
	if hf.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("histogram type %v", hf.GetType())
	}
	hm := hf.GetMetric()[0].GetHistogram()
	if hm.GetSampleCount() != 5 || hm.GetSampleSum() != 106.7 {
		t.Errorf("histogram count %d sum %g, want 5 and 106.7", hm.GetSampleCount(), hm.GetSampleSum())
	}
	want := map[float64]uint64{0.5: 1, 1: 3, 10: 4} // cumulative
	for _, b := range hm.GetBucket() {
		if w, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
			t.Errorf("bucket le=%g: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
	}
	if l := labels(hf.GetMetric()[0]); l["kind"] != "deploy" {
		t.Errorf("histogram labels %v", l)
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, errShort
}

var errShort = bytes.ErrTooLarge

// TestWriter_KeepsFirstError ensures a failing destination surfaces its
// error from Flush.
func TestWriter_KeepsFirstError(t *testing.T) {
	fw := &failWriter{}
	w := New(fw)
	w.Family("x", Gauge, "x")
	w.Sample("x", 1)
	if err := w.Flush(); err != errShort {
		t.Fatalf("Flush = %v, want %v", err, errShort)
	}
	if fw.n != 1 {
		t.Errorf("%d writes after the failure, want 1", fw.n)
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{67108864: "67108864", 0: "0", -3: "-3", 0.056601: "0.056601",
		1e20: "1e+20", 2.5e-9: "2.5e-09", math.Inf(-1): "-Inf", math.NaN(): "NaN"} {
		if got := FormatValue(v); got != want {
			t.Errorf("FormatValue(%g) = %q, want %q", v, got, want)
		}
	}
}
