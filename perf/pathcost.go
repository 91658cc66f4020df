package perf

import (
	"context"
	"fmt"
	"math"
	"time"
)

// PathCost is the per-packet cost of an established flow through the
// enforcer against the kernel path, measured in the same run: the median
// RTT and 1-stream bulk throughput of each over the rounds, and the median
// of the per-round ratios (rounds interleaved: kernel, enforcer, kernel,
// ...).
type PathCost struct {
	Rounds         int   `json:"rounds"`
	RTTUs          Value `json:"rttUs"`
	KernelRTTUs    Value `json:"kernelRttUs"`
	RTTRatio       Value `json:"rttRatio"`
	BulkGbps       Value `json:"bulkGbps"`
	KernelBulkGbps Value `json:"kernelBulkGbps"`
	BulkRatio      Value `json:"bulkRatio"`
}

// comparePaths measures RTT and 1-stream bulk on a new connection of the
// kernel setup and of the enforcer setup, rounds times, each figure for d.
// A figure that fails stays out of its round and becomes a note; label
// (e.g. "100 PUs") starts the notes and the progress messages.
func comparePaths(ctx context.Context, kernel, enf *setup, rounds int, d time.Duration, label string, progress func(string)) (PathCost, []string) {
	var notes []string
	note := func(format string, args ...any) { notes = append(notes, label+": "+fmt.Sprintf(format, args...)) }
	prog := func(m string) { progress(label + ": " + m) }
	rtt := [2][]float64{nanSlice(rounds), nanSlice(rounds)}
	bulk := [2][]float64{nanSlice(rounds), nanSlice(rounds)}
	for r := range rounds {
		for i, s := range []*setup{kernel, enf} {
			if ctx.Err() != nil {
				note("%v", ctx.Err())
				return PathCost{}, notes
			}
			prog(fmt.Sprintf("round %d/%d %s: RTT and bulk", r+1, rounds, s.v.Name()))
			if rt, err := s.client.RTT(ctx, d); err != nil {
				note("%s rtt: %v", s.v.Name(), err)
			} else if len(rt.Samples) > 0 {
				rtt[i][r] = us(LatenciesOf(rt.Samples).P50)
			}
			br, err := s.client.Bulk(ctx, 1, d)
			switch {
			case err != nil:
				note("%s bulk: %v", s.v.Name(), err)
			case br.Sent != br.Received:
				note("%s bulk: sent %d bytes, server received %d", s.v.Name(), br.Sent, br.Received)
			default:
				bulk[i][r] = br.Gbps()
			}
		}
	}
	return PathCost{
		Rounds:         rounds,
		KernelRTTUs:    medianValue(rtt[0]),
		RTTUs:          medianValue(rtt[1]),
		RTTRatio:       medianValue(Ratios(rtt[1], rtt[0])),
		KernelBulkGbps: medianValue(bulk[0]),
		BulkGbps:       medianValue(bulk[1]),
		BulkRatio:      medianValue(Ratios(bulk[1], bulk[0])),
	}, notes
}

// medianValue is the median of the measured values (NaN if none).
func medianValue(xs []float64) Value {
	if s := Summarize(xs); s.N > 0 {
		return Value(s.Median)
	}
	return Value(math.NaN())
}

// kernelSetup is the kernel path on a one-node topology with the load
// generator's server and client, ready to measure.
func kernelSetup(ctx context.Context) (*setup, error) {
	cfg := Config{Topology: OneNode}
	cfg.defaults()
	return newSetup(ctx, cfg, Kernel{})
}
