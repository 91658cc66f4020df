package perf

import (
	"math"
	"slices"
	"time"
)

// Summary is a figure over the rounds of a run: its median and range.
type Summary struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Summarize returns the median and range of xs, ignoring NaNs (a round in
// which the figure could not be taken). The zero Summary (N 0) means no
// value.
func Summarize(xs []float64) Summary {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{}
	}
	slices.Sort(v)
	return Summary{Median: median(v), Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// Median returns the median of xs (the mean of the two middle values for an
// even count), or NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	v := slices.Clone(xs)
	slices.Sort(v)
	return median(v)
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// Ratios returns v[i]/base[i] per round; a round where either is missing
// (NaN) or the base is zero gives NaN.
func Ratios(v, base []float64) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		if i >= len(base) || base[i] == 0 || math.IsNaN(base[i]) || math.IsNaN(v[i]) {
			out[i] = math.NaN()
			continue
		}
		out[i] = v[i] / base[i]
	}
	return out
}

// Deltas returns v[i]-base[i] per round (NaN where either is missing).
func Deltas(v, base []float64) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		if i >= len(base) || math.IsNaN(base[i]) || math.IsNaN(v[i]) {
			out[i] = math.NaN()
			continue
		}
		out[i] = v[i] - base[i]
	}
	return out
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted samples by
// the nearest-rank method: the smallest sample with at least p% of the
// samples at or below it. It is 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Latencies are the percentiles of a set of latency samples.
type Latencies struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
}

// LatenciesOf sorts samples in place and returns their percentiles.
func LatenciesOf(samples []time.Duration) Latencies {
	slices.Sort(samples)
	return Latencies{
		N:   len(samples),
		P50: Percentile(samples, 50),
		P90: Percentile(samples, 90),
		P99: Percentile(samples, 99),
	}
}
