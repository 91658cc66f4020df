package perf

import (
	"math"
	"testing"
	"time"
)

func sameFloat(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) < 1e-9
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{"none", nil, math.NaN()},
		{"one", []float64{7}, 7},
		{"odd unsorted", []float64{5, 1, 3}, 3},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"duplicates", []float64{2, 2, 9, 2}, 2},
		{"negative", []float64{-3, -1, -2}, -2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.in...)
			if got := Median(tc.in); !sameFloat(got, tc.want) {
				t.Fatalf("Median(%v) = %v, want %v", tc.in, got, tc.want)
			}
			for i := range in { // the input is not reordered
				if in[i] != tc.in[i] {
					t.Fatalf("Median reordered its input: %v", tc.in)
				}
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name string
		in   []float64
		want Summary
	}{
		{"none", nil, Summary{}},
		{"all missing", []float64{nan, nan}, Summary{}},
		{"one", []float64{4}, Summary{Median: 4, Min: 4, Max: 4, N: 1}},
		{"range", []float64{10, 30, 20}, Summary{Median: 20, Min: 10, Max: 30, N: 3}},
		{"missing rounds skipped", []float64{nan, 8, 2, nan}, Summary{Median: 5, Min: 2, Max: 8, N: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Summarize(tc.in)
			if !sameFloat(got.Median, tc.want.Median) || got.Min != tc.want.Min || got.Max != tc.want.Max || got.N != tc.want.N {
				t.Fatalf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestRatiosAndDeltas(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name         string
		v, base      []float64
		ratio, delta []float64
		medianRatio  float64
	}{
		{"same", []float64{5, 6}, []float64{5, 6}, []float64{1, 1}, []float64{0, 0}, 1},
		{"per round, not of medians", []float64{50, 120, 30}, []float64{100, 100, 60},
			[]float64{0.5, 1.2, 0.5}, []float64{-50, 20, -30}, 0.5},
		{"zero base", []float64{1}, []float64{0}, []float64{nan}, []float64{1}, nan},
		{"missing", []float64{nan, 4}, []float64{2, nan}, []float64{nan, nan}, []float64{nan, nan}, nan},
		{"short base", []float64{3, 3}, []float64{1}, []float64{3, nan}, []float64{2, nan}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Ratios(tc.v, tc.base)
			d := Deltas(tc.v, tc.base)
			for i := range tc.ratio {
				if !sameFloat(r[i], tc.ratio[i]) {
					t.Errorf("Ratios[%d] = %v, want %v", i, r[i], tc.ratio[i])
				}
				if !sameFloat(d[i], tc.delta[i]) {
					t.Errorf("Deltas[%d] = %v, want %v", i, d[i], tc.delta[i])
				}
			}
			s := Summarize(r)
			if s.N == 0 {
				if !math.IsNaN(tc.medianRatio) {
					t.Errorf("no ratio, want median %v", tc.medianRatio)
				}
			} else if !sameFloat(s.Median, tc.medianRatio) {
				t.Errorf("median ratio %v, want %v", s.Median, tc.medianRatio)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", hundred, 50, 50 * time.Millisecond},
		{"p90 of 1..100", hundred, 90, 90 * time.Millisecond},
		{"p99 of 1..100", hundred, 99, 99 * time.Millisecond},
		{"p100 is the max", hundred, 100, 100 * time.Millisecond},
		{"tiny p is the min", hundred, 0.001, 1 * time.Millisecond},
		{"nearest rank rounds up", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 4 is the max", ms(1, 2, 3, 40), 99, 40 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.sorted, tc.p); got != tc.want {
				t.Fatalf("Percentile(p%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func TestLatenciesOf(t *testing.T) {
	for _, tc := range []struct {
		name          string
		in            []time.Duration
		p50, p90, p99 time.Duration
	}{
		{"unsorted", []time.Duration{9, 1, 5, 3, 7, 2, 8, 4, 6, 10}, 5, 9, 10},
		{"one outlier in 100 stays above p99", append(make([]time.Duration, 99), 1000), 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := LatenciesOf(tc.in)
			if l.N != len(tc.in) || l.P50 != tc.p50 || l.P90 != tc.p90 || l.P99 != tc.p99 {
				t.Fatalf("LatenciesOf = %+v, want p50 %v p90 %v p99 %v", l, tc.p50, tc.p90, tc.p99)
			}
		})
	}
}
