// Package promtext writes metrics in the Prometheus text exposition
// format (version 0.0.4), which Prometheus, VictoriaMetrics, the
// OpenTelemetry collector and curl all read. It is a few dozen lines
// instead of a client library: the agent's metrics are computed at each
// scrape from what it knows already, so it needs no registry, only the
// format. Its tests check the output with Prometheus's own parser.
//
// It must not import other berth packages.
package promtext

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
)

// Metric types, as written on a # TYPE line.
const (
	Counter   = "counter"
	Gauge     = "gauge"
	Histogram = "histogram"
)

// ContentType is the Content-Type of the format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Writer writes metric families one after the other. Each family is
// started with Family and followed by its samples; a name must not be
// started twice. The first write error is kept (Err) and later writes
// do nothing.
type Writer struct {
	w   *bufio.Writer
	err error
}

// New returns a Writer on w; call Flush at the end.
func New(w io.Writer) *Writer { return &Writer{w: bufio.NewWriter(w)} }

// Family starts a metric family: its # HELP and # TYPE lines.
func (w *Writer) Family(name, typ, help string) {
	w.str("# HELP ")
	w.str(name)
	w.str(" ")
	w.str(escapeHelp(help))
	w.str("\n# TYPE ")
	w.str(name)
	w.str(" ")
	w.str(typ)
	w.str("\n")
}

// Sample writes one sample of the current family: labels are name,
// value pairs (an odd one out is ignored); values are escaped.
func (w *Writer) Sample(name string, value float64, labels ...string) {
	w.str(name)
	w.labels(labels, "", "")
	w.str(" ")
	w.str(FormatValue(value))
	w.str("\n")
}

// Histogram writes the samples of one histogram of the current family:
// name_bucket for each bound and +Inf, name_sum and name_count.
func (w *Writer) Histogram(name string, h HistogramData, labels ...string) {
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		w.str(name)
		w.str("_bucket")
		w.labels(labels, "le", FormatValue(b))
		w.str(" ")
		w.str(strconv.FormatUint(cum, 10))
		w.str("\n")
	}
	w.str(name)
	w.str("_bucket")
	w.labels(labels, "le", "+Inf")
	w.str(" ")
	w.str(strconv.FormatUint(h.Count, 10))
	w.str("\n")
	w.Sample(name+"_sum", h.Sum, labels...)
	w.Sample(name+"_count", float64(h.Count), labels...)
}

// Flush writes what is buffered and returns the first error.
func (w *Writer) Flush() error {
	if w.err == nil {
		w.err = w.w.Flush()
	}
	return w.err
}

// Err returns the first write error.
func (w *Writer) Err() error { return w.err }

func (w *Writer) str(s string) {
	if w.err == nil {
		_, w.err = w.w.WriteString(s)
	}
}

// labels writes {a="1",b="2"} with an extra pair at the end when
// extraName is set; nothing without labels.
func (w *Writer) labels(pairs []string, extraName, extraValue string) {
	n := len(pairs) / 2
	if n == 0 && extraName == "" {
		return
	}
	w.str("{")
	for i := range n {
		if i > 0 {
			w.str(",")
		}
		w.str(pairs[2*i])
		w.str(`="`)
		w.str(escapeLabel(pairs[2*i+1]))
		w.str(`"`)
	}
	if extraName != "" {
		if n > 0 {
			w.str(",")
		}
		w.str(extraName)
		w.str(`="`)
		w.str(extraValue)
		w.str(`"`)
	}
	w.str("}")
}

// FormatValue writes a sample value: a whole number as digits
// ("67108864", not "6.7108864e+07"), else the shortest decimal that
// reads back the same; +Inf, -Inf or NaN.
func FormatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	case v == math.Trunc(v) && math.Abs(v) < 1<<53:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

// HistogramData is a snapshot of a histogram: Counts[i] observations
// fell in (Bounds[i-1], Bounds[i]] (not cumulated), Count in all.
type HistogramData struct {
	Bounds []float64
	Counts []uint64
	Sum    float64
	Count  uint64
}

// Hist counts observations into fixed buckets; safe for concurrent use.
type Hist struct {
	mu sync.Mutex // guards d
	d  HistogramData
}

// NewHist returns a histogram with the given upper bounds, ascending.
func NewHist(bounds []float64) *Hist {
	return &Hist{d: HistogramData{Bounds: bounds, Counts: make([]uint64, len(bounds))}}
}

// Observe adds one observation.
func (h *Hist) Observe(v float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, b := range h.d.Bounds {
		if v <= b {
			h.d.Counts[i]++
			break
		}
	}
	h.d.Sum += v
	h.d.Count++
}

// Snapshot returns a copy of the histogram's data.
func (h *Hist) Snapshot() HistogramData {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.d
	d.Counts = append([]uint64(nil), h.d.Counts...)
	return d
}
