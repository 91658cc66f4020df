package perf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// ReadResult decodes a comparison run saved with --json. name is what the
// errors call the input (a file name).
func ReadResult(r io.Reader, name string) (*Result, error) {
	dec := json.NewDecoder(r)
	var res Result
	if err := dec.Decode(&res); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%s: not a trireme perf --json result: offset %d: %v", name, se.Offset, err)
		}
		return nil, fmt.Errorf("%s: not a trireme perf --json result: %w", name, err)
	}
	if len(res.Figures) == 0 || len(res.Variants) == 0 {
		return nil, fmt.Errorf("%s: not a trireme perf --json comparison result (no figures or variants; the scale scenarios are not compared)", name)
	}
	for i, f := range res.Figures {
		if f.Key == "" {
			return nil, fmt.Errorf("%s: figure %d has no key", name, i+1)
		}
	}
	return &res, nil
}

// WriteComparison writes two runs of the comparison side by side, before
// and after a change: per figure and variant the headline of each run
// (the ratio to the baseline, the added latency for latencies, the value
// for the enforcer's own figures) as "before → after". The two runs must
// be of one topology; variants and figures are those of after, and a cell
// one run lacks is "–". markdown: a Markdown table instead of columns.
func WriteComparison(w io.Writer, before, after *Result, markdown bool) error {
	if before.Topology != after.Topology {
		return fmt.Errorf("perf: the runs are of different topologies (%s, %s)", before.Topology, after.Topology)
	}
	var rows [][]string
	rows = append(rows, append([]string{"figure"}, after.Variants...))
	for _, fa := range after.Figures {
		fb := before.Figure(fa.Key)
		row := []string{fa.Label + " " + arrow(fa.Higher)}
		for _, v := range after.Variants {
			var vb *VariantFigure
			if fb != nil {
				vb = fb.Variants[v]
			}
			b := headline(fa.FigureInfo, vb, v == before.Baseline)
			a := headline(fa.FigureInfo, fa.Variants[v], v == after.Baseline)
			row = append(row, b+" → "+a)
		}
		rows = append(rows, row)
	}
	fmt.Fprintf(w, "trireme perf: %s; before: %s (%d round(s) of %s), after: %s (%d round(s) of %s)\n",
		after.Topology, stamp(before), before.Rounds, before.Duration, stamp(after), after.Rounds, after.Duration)
	fmt.Fprintln(w, "cells: before → after; ×ratio to the baseline, +added to it (latencies), or the value (the enforcer's own figures); medians over the rounds")
	if markdown {
		fmt.Fprintln(w)
		for i, r := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
			if i == 0 {
				fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(r)))
			}
		}
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "↑ higher is better, ↓ lower is better")
	return nil
}

// headline is the figure a run is judged by, for one variant.
func headline(f FigureInfo, vf *VariantFigure, baseline bool) string {
	switch {
	case vf == nil || vf.Value == nil || vf.Value.N == 0 || !isFinite(vf.Value.Median):
		return "–"
	case baseline:
		return num(vf.Value.Median) + " " + f.Unit
	case vf.Delta != nil && isFinite(vf.Delta.Median):
		s := num(vf.Delta.Median) + " " + f.Unit
		if vf.Delta.Median >= 0 {
			s = "+" + s
		}
		return s
	case vf.Ratio != nil && isFinite(vf.Ratio.Median):
		return fmt.Sprintf("×%.2f", vf.Ratio.Median)
	default:
		return num(vf.Value.Median) + " " + f.Unit
	}
}

func isFinite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

func arrow(higher bool) string {
	if higher {
		return "↑"
	}
	return "↓"
}

func stamp(r *Result) string {
	if r.Started.IsZero() {
		return "?"
	}
	return r.Started.UTC().Format("2006-01-02 15:04")
}
