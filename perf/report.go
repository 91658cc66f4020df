package perf

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// WriteTable writes the result as a table for people: per variant, the
// ratio to the baseline (the headline), the difference for latencies, then
// the median and the range over the rounds.
func (r *Result) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "trireme perf: %s, %d round(s) of %s per figure, %d clients, %d streams\n",
		r.Topology, r.Rounds, r.Duration, r.Clients, r.Streams)
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs", m.CPUs)
	if m.CPUModel != "" {
		fmt.Fprintf(w, " (%s)", m.CPUModel)
	}
	fmt.Fprintf(w, ", kernel %s, %s\n", m.Kernel, m.GoVersion)
	if r.Baseline != "" {
		fmt.Fprintf(w, "cells: ×ratio to %s (median of per-round ratios) [+difference], then median (min–max)\n\n", r.Baseline)
	} else {
		fmt.Fprintf(w, "cells: median (min–max); no %s variant, so no ratios\n\n", BaselineName)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "figure\tunit")
	for _, v := range r.Variants {
		fmt.Fprintf(tw, "\t%s", v)
	}
	fmt.Fprintln(tw)
	for _, f := range r.Figures {
		fmt.Fprintf(tw, "%s %s\t%s", f.Label, arrow(f.Higher), f.Unit)
		for _, v := range r.Variants {
			fmt.Fprintf(tw, "\t%s", cell(f, f.Variants[v], v == r.Baseline))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "↑ higher is better, ↓ lower is better")
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: round %d, %s: %s\n", n.Round, n.Variant, n.Message)
	}
	return nil
}

func cell(f FigureResult, vf *VariantFigure, baseline bool) string {
	if vf == nil || vf.Value == nil {
		return "–"
	}
	var b strings.Builder
	if !baseline && vf.Ratio != nil {
		fmt.Fprintf(&b, "×%.2f ", vf.Ratio.Median)
		if vf.Delta != nil {
			if vf.Delta.Median >= 0 {
				b.WriteByte('+')
			}
			fmt.Fprintf(&b, "%s ", num(vf.Delta.Median))
		}
	}
	s := vf.Value
	if s.N > 1 {
		fmt.Fprintf(&b, "%s (%s–%s)", num(s.Median), num(s.Min), num(s.Max))
	} else {
		b.WriteString(num(s.Median))
	}
	return b.String()
}

// num prints a figure with about three significant digits.
func num(x float64) string {
	a := math.Abs(x)
	switch {
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	case a >= 1:
		return fmt.Sprintf("%.2f", x)
	default:
		return fmt.Sprintf("%.3f", x)
	}
}

// WriteJSON writes the result as indented JSON.
func (r *ScaleResult) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// WriteTable writes the scale result as a table for people.
func (r *ScaleResult) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "trireme perf --scale: attach and detach through the control API, mean of %d per size (max);\n", r.Window)
	fmt.Fprintf(w, "with that many PUs attached: daemon RSS, nftables tables/chains/rules, RTT and 1-stream bulk between two PUs (median of %d rounds of %s, ×ratio to the kernel path)\n", r.Rounds, r.Duration)
	fmt.Fprintf(w, "machine: %d CPUs, kernel %s, %s\n\n", m.CPUs, m.Kernel, m.GoVersion)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PUs\tattach ms\tdetach ms\tRSS MiB\tnft tables/chains/rules\tRTT µs\tbulk Gbit/s")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%d\t%s (%s)\t%s (%s)\t%s\t%d/%d/%d\t%s\t%s\n", row.PUs, num(float64(row.AttachMs)), num(float64(row.AttachMaxMs)),
			num(float64(row.DetachMs)), num(float64(row.DetachMaxMs)), num(float64(row.RSSMiB)),
			row.Nft.Tables, row.Nft.Chains, row.Nft.Rules, pathCell(row.Path.RTTRatio, row.Path.RTTUs, row.Path.KernelRTTUs),
			pathCell(row.Path.BulkRatio, row.Path.BulkGbps, row.Path.KernelBulkGbps))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "restart with %d PUs and %d authorized flows in the kernel: %s ms (to the control API answering with every PU restored); flows tracked after it: %d\n",
		r.RestartPUs, r.RestartFlows, num(float64(r.RestartMs)), r.FlowsAfter)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

// WriteJSON writes the soak result as indented JSON.
func (r *SoakResult) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// WriteTable writes the soak result as a table for people: one row per
// interval, then the drain after the load.
func (r *SoakResult) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "trireme perf --soak %s: %d allowed + %d denied closed-loop clients, %d held idle connections, a row per %s\n",
		r.Duration, r.Allowed, r.Denied, r.Held, r.Interval)
	fmt.Fprintf(w, "machine: %d CPUs, kernel %s, %s\n\n", m.CPUs, m.Kernel, m.GoVersion)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "interval\tallowed/s\tallowed failed\tdenied/s\tdenied through\theld ok/failed\tflows\ttable-full\tRSS MiB\tgoroutines\tfds\trecords lost\tflow log MiB")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d/%d\t%d\t%d\t%s\t%d\t%d\t%d\t%s\n", row.Label, num(float64(row.AllowedPerSec)), row.AllowedFailed,
			num(float64(row.DeniedPerSec)), row.DeniedConnected, row.HeldOK, row.HeldFailed, row.Flows, row.TableFull,
			num(float64(row.RSSMiB)), row.Goroutines, row.FDs, row.RecordsLost, num(float64(row.FlowLogMiB)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "total: %d allowed connections, %d failed; %d denied refused, %d got through; %d held connections failed\n",
		r.AllowedConns, r.AllowedFailed, r.DeniedConns, r.DeniedConnected, r.HeldFailed)
	for _, row := range r.Rows {
		if row.FirstError != "" {
			fmt.Fprintf(w, "interval %s: first failure: %s\n", row.Label, row.FirstError)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

// pathCell is "×ratio value (kernel: value)".
func pathCell(ratio, v, kernel Value) string {
	return fmt.Sprintf("×%s %s (kernel %s)", num(float64(ratio)), num(float64(v)), num(float64(kernel)))
}

// WriteJSON writes the flows result as indented JSON.
func (r *FlowsResult) WriteJSON(w io.Writer) error { return writeJSON(w, r) }

// WriteTable writes the flows result as a table for people.
func (r *FlowsResult) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "trireme perf --flows: idle TCP connections held open through one node (and as many through the kernel path);\n")
	fmt.Fprintf(w, "RTT and 1-stream bulk of a new connection: median of %d rounds of %s, ×ratio to the kernel path\n", r.Rounds, r.Duration)
	fmt.Fprintf(w, "machine: %d CPUs, kernel %s, %s\n", m.CPUs, m.Kernel, m.GoVersion)
	fmt.Fprintf(w, "daemon RSS before any connection: %s MiB; kernel memory of a set element: %s bytes (%d elements in a set of its own, median of %d)\n\n",
		num(float64(r.BaseRSSMiB)), num(float64(r.Calibration.BytesPerElement)), r.Calibration.Elements, r.Calibration.Reps)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "connections\topened in s\tdaemon flows\tRSS MiB\tbytes/conn\tset elements\tset MiB\tRTT µs\tbulk Gbit/s")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%d\t%s\t%s\t%s\n", row.Flows, num(float64(row.OpenSeconds)), row.DaemonFlows,
			num(float64(row.RSSMiB)), num(float64(row.BytesPerFlow)), row.SetElements, num(float64(row.SetMiB)),
			pathCell(row.Path.RTTRatio, row.Path.RTTUs, row.Path.KernelRTTUs), pathCell(row.Path.BulkRatio, row.Path.BulkGbps, row.Path.KernelBulkGbps))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "restart with %d connections open: %s ms (to the control API answering); flows tracked after it: %d; RSS after: %s MiB; held connections answering after it: %d, failed: %d\n",
		r.RestartFlows, num(float64(r.RestartMs)), r.FlowsAfter, num(float64(r.RSSAfterMiB)), r.HeldOK, r.HeldFailed)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

// writeJSON writes a result as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
