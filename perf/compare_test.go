package perf

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// run is a saved comparison result with one figure of each kind: a rate
// (ratio), a latency (added µs) and an enforcer-only figure (value).
func run(topo TopologyKind, rate, connect, cpu float64) *Result {
	sum := func(x float64) *Summary { return &Summary{Median: x, Min: x, Max: x, N: 3} }
	return &Result{
		Topology: topo, Rounds: 3, Duration: "2s", Variants: []string{"kernel", "psk"}, Baseline: "kernel",
		Figures: []FigureResult{
			{FigureInfo: FigureInfo{Key: ConnRate1, Label: "new conns/s, 1 client", Unit: "conn/s", Higher: true},
				Variants: map[string]*VariantFigure{
					"kernel": {Value: sum(7000), Ratio: sum(1)},
					"psk":    {Value: sum(7000 * rate), Ratio: sum(rate)},
				}},
			{FigureInfo: FigureInfo{Key: ConnectP50, Label: "connect p50", Unit: "µs", Delta: true},
				Variants: map[string]*VariantFigure{
					"kernel": {Value: sum(25), Ratio: sum(1), Delta: sum(0)},
					"psk":    {Value: sum(25 + connect), Ratio: sum((25 + connect) / 25), Delta: sum(connect)},
				}},
			{FigureInfo: FigureInfo{Key: CPUPer1k, Label: "enforcer CPU per 1k conns", Unit: "s", Enforcer: true},
				Variants: map[string]*VariantFigure{
					"kernel": {Rounds: []Value{Value(math.NaN())}},
					"psk":    {Value: sum(cpu)},
				}},
		},
	}
}

// saved is r as trireme perf --json writes it, read back.
func saved(t *testing.T, r *Result) *Result {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadResult(&b, "run.json")
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestWriteComparison(t *testing.T) {
	before := saved(t, run(OneNode, 0.18, 299, 0.354))
	after := saved(t, run(OneNode, 0.30, 162, 0.231))
	var out bytes.Buffer
	if err := WriteComparison(&out, before, after, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"×0.18 → ×0.30",
		"+299 µs → +162 µs",
		"0.354 s → 0.231 s",
		"7000 conn/s → 7000 conn/s", // the baseline: its value
		"– → –",                     // the kernel path has no enforcer CPU
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	if err := WriteComparison(&out, before, after, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| figure | kernel | psk |\n|---|---|---|\n") ||
		!strings.Contains(out.String(), "| connect p50 ↓ | 25.0 µs → 25.0 µs | +299 µs → +162 µs |") {
		t.Errorf("markdown comparison:\n%s", out.String())
	}

	// A figure or variant one run lacks is a dash, not a failure.
	partial := saved(t, run(OneNode, 0.2, 300, 0.3))
	partial.Figures = partial.Figures[1:]
	delete(partial.Figures[0].Variants, "psk")
	out.Reset()
	if err := WriteComparison(&out, partial, after, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "– → ×0.30") || !strings.Contains(out.String(), "– → +162 µs") {
		t.Errorf("comparison with a partial run:\n%s", out.String())
	}

	if err := WriteComparison(&out, saved(t, run(TwoNodes, 0.2, 300, 0.3)), after, false); err == nil ||
		!strings.Contains(err.Error(), "different topologies") {
		t.Errorf("runs of two topologies compared: %v", err)
	}
}

func TestReadResultRefuses(t *testing.T) {
	scale, _ := json.Marshal(ScaleResult{})
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", "not a trireme perf --json result"},
		{"not JSON", "figure unit kernel psk\n", "offset 2"},
		{"truncated", `{"topology": "one-node", "figures": [`, "not a trireme perf --json result"},
		{"wrong type", `{"figures": 3}`, "not a trireme perf --json result"},
		{"a scale scenario", string(scale), "no figures or variants"},
		{"a figure without key", `{"variants": ["kernel"], "figures": [{"label": "x"}]}`, "figure 1 has no key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadResult(strings.NewReader(c.in), "in.json")
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "in.json: ") {
				t.Errorf("error %v, want one naming in.json with %q", err, c.want)
			}
		})
	}
}

func FuzzReadResult(f *testing.F) {
	var b bytes.Buffer
	_ = run(OneNode, 0.3, 160, 0.2).WriteJSON(&b)
	f.Add(b.Bytes())
	f.Add([]byte(`{"variants":["psk"],"figures":[{"key":"k","variants":{"psk":{"value":{"median":1e309,"n":1}}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := ReadResult(bytes.NewReader(data), "fuzz.json")
		if err != nil {
			return
		}
		var out bytes.Buffer
		_ = res.WriteTable(&out)
		_ = WriteComparison(&out, res, res, false)
		_ = WriteComparison(&out, res, res, true)
	})
}
