package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/trireme-go/trireme/perf"
)

// perfVariants maps --variants names to the variants that measure them.
// psk and pki run this binary's `trireme daemon` in each node namespace
// (see perf.Daemon).
var perfVariants = map[string]func() (perf.Variant, error){
	perf.BaselineName: func() (perf.Variant, error) { return perf.Kernel{}, nil },
	"psk": func() (perf.Variant, error) {
		return &perf.Daemon{VariantName: "psk", Secrets: perf.PSKSecrets()}, nil
	},
	"pki": func() (perf.Variant, error) {
		sec, err := perf.PKISecrets()
		return &perf.Daemon{VariantName: "pki", Secrets: sec}, err
	},
}

func init() { rootCmd.AddCommand(newPerfCmd()) }

func newPerfCmd() *cobra.Command {
	var (
		rounds   int
		duration time.Duration
		variants string
		topology string
		clients  int
		streams  int
		asJSON   bool
		iperf3   string
		keep     bool
		twReuse  bool
		daemon   string
		profDir  string
		scale    string
		flows    int
		held     string
		rules    string
		soak     perf.SoakConfig
	)
	cmd := &cobra.Command{
		Use:   "perf",
		Short: "Measure the enforcer against the plain kernel path, interleaved, in network namespaces (root)",
		Long: `perf builds one copy of a topology of network namespaces per variant, then
measures every variant in turn, round after round (A B C A B C ...), so that
drift on a noisy machine hits them alike: new connections per second with 1
and N clients, connect latency, bulk throughput with 1 and several streams,
round-trip time, the enforcer's CPU time and peak RSS; then for UDP, new
flows per second (a request and its response on a fresh client port each
time) with 1 and N clients, the first response's latency, and bulk
throughput and round-trip time on an established flow. Each figure is
reported as the median of the per-round ratios to the kernel path (the
headline), then as median and range over the rounds.

Scale scenarios (docs/perf.md), each with --json:
  --scale 10,100,500         PUs per node: attach/detach time, daemon RSS,
                             nftables rules, RTT and bulk vs the kernel path
  --flows 1000,10000,100000  concurrent established connections: daemon RSS
                             per flow, kernel set memory, RTT and bulk vs the
                             kernel path, restart time
  --rules 10,1000,10000      new-connection figures with policies of that
                             many rules, vs the kernel path
--rounds and --duration set the RTT/bulk rounds of --scale and --flows
(default 3 of 1s there).

Saved results (--json) are read back by "trireme perf show FILE" (the
table) and "trireme perf compare BEFORE AFTER" (side by side).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The scale scenarios measure a path only on the side: their
			// own defaults unless --rounds or --duration say otherwise.
			var pathRounds int
			var pathDuration time.Duration
			if cmd.Flags().Changed("rounds") {
				pathRounds = rounds
			}
			if cmd.Flags().Changed("duration") {
				pathDuration = duration
			}
			if scale != "" {
				return runScale(cmd, scale, flows, daemon, keep, asJSON, pathRounds, pathDuration)
			}
			if held != "" {
				return runFlows(cmd, held, daemon, keep, asJSON, pathRounds, pathDuration)
			}
			if soak.Duration > 0 {
				return runSoak(cmd, soak, daemon, keep, asJSON)
			}
			topo, err := perf.ParseTopology(topology)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			var vs []perf.Variant
			switch {
			case rules != "" && cmd.Flags().Changed("variants"):
				return &exitError{code: 2, err: fmt.Errorf("--rules makes its own variants: kernel and rules-N; --variants does not go with it")}
			case rules != "":
				vs, err = rulesVariants(rules, daemon, keep)
			default:
				vs, err = namedVariants(variants, daemon, keep)
			}
			if err != nil {
				return err
			}
			if rounds < 1 || duration <= 0 || clients < 1 || streams < 1 {
				return &exitError{code: 2, err: fmt.Errorf("--rounds, --duration, --clients and --streams must be positive")}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg := perf.Config{
				Topology: topo, Variants: vs, Rounds: rounds, Duration: duration,
				Clients: clients, Streams: streams, NoTimeWaitReuse: !twReuse,
				ProfileDir: profDir, ConnectionsOnly: rules != "",
			}
			if profDir != "" {
				if err := os.MkdirAll(profDir, 0o755); err != nil {
					return err
				}
			}
			switch iperf3 {
			case "auto":
				cfg.Iperf3, _ = exec.LookPath("iperf3") // optional: left out when absent
			case "off", "":
			default:
				if cfg.Iperf3, err = exec.LookPath(iperf3); err != nil {
					return &exitError{code: 2, err: err}
				}
			}
			if term.IsTerminal(int(os.Stderr.Fd())) {
				cfg.Progress = func(msg string) { fmt.Fprintf(os.Stderr, "\r\033[K%s", msg) }
			}
			res, err := perf.Run(ctx, cfg)
			if cfg.Progress != nil {
				fmt.Fprint(os.Stderr, "\r\033[K")
			}
			for _, v := range vs {
				if d, ok := v.(*perf.Daemon); ok && d.KeptDir() != "" {
					fmt.Fprintf(os.Stderr, "%s: daemon files kept in %s\n", d.Name(), d.KeptDir())
				}
			}
			if err != nil {
				return err
			}
			if asJSON {
				return res.WriteJSON(cmd.OutOrStdout())
			}
			return res.WriteTable(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&rounds, "rounds", perf.DefaultRounds, "interleaved rounds")
	f.DurationVar(&duration, "duration", perf.DefaultDuration, "duration of each figure in each round")
	f.StringVar(&variants, "variants", "kernel,psk,pki", "comma-separated variants to compare ("+knownVariants()+")")
	f.StringVar(&topology, "topology", string(perf.OneNode), "one-node or two-nodes")
	f.IntVar(&clients, "clients", perf.DefaultClients, "concurrent clients of the N-client connection rate")
	f.IntVar(&streams, "streams", perf.DefaultStreams, "streams of the multi-stream bulk figure")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.BoolVar(&twReuse, "tw-reuse", true, "let the client reuse ports in TIME_WAIT (tcp_tw_reuse=1); false: no 5-tuple recurs within a minute")
	f.StringVar(&daemon, "daemon-binary", "", "trireme binary that runs the enforcer daemons (default: this one)")
	f.StringVar(&profDir, "profile", "", "directory for `perf record -g` profiles of the enforcers during the last round's connection runs")
	f.BoolVar(&keep, "keep", false, "keep the enforcer daemons' configs, logs and flow logs (under $TMPDIR)")
	f.StringVar(&scale, "scale", "", "instead of the comparison: attach/detach cost per PU at these PU counts (e.g. 10,100,500,1000) and the restart time at the largest (psk daemon)")
	f.DurationVar(&soak.Duration, "soak", 0, "instead of the comparison: an endurance run of this length (e.g. 10m): steady allowed and denied connections and held idle ones, the daemon sampled every --soak-interval (psk daemon)")
	f.DurationVar(&soak.Interval, "soak-interval", time.Minute, "with --soak: the sampling interval")
	f.IntVar(&soak.Allowed, "soak-allowed", 6, "with --soak: closed-loop clients making allowed connections")
	f.IntVar(&soak.Denied, "soak-denied", 2, "with --soak: closed-loop clients making connections the policy refuses")
	f.IntVar(&soak.Held, "soak-held", 1000, "with --soak: idle connections held open and checked every interval")
	f.StringVar(&held, "flows", "", "instead of the comparison: idle TCP connections held open through one node at these counts (e.g. 1000,10000,100000): daemon RSS, flow table, kernel set memory, RTT and bulk against the kernel path, restart time at the largest (psk daemon)")
	f.StringVar(&rules, "rules", "", "compare new-connection figures with policies of these many rules in force (e.g. 10,1000,10000; at least 2: the two that allow the measured flow), against the kernel path (psk daemons)")
	f.IntVar(&flows, "scale-flows", 0, "with --scale: authorized flows written into the kernel before the restart")
	f.StringVar(&iperf3, "iperf3", "auto", "iperf3 binary for a cross-check of bulk throughput: auto (if installed), off, or a path")
	cmd.AddCommand(perfFileCmds()...)
	return cmd
}

func knownVariants() string {
	names := make([]string, 0, len(perfVariants))
	for n := range perfVariants {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// namedVariants are the variants of a --variants list.
func namedVariants(list, binary string, keep bool) ([]perf.Variant, error) {
	var vs []perf.Variant
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		mk, ok := perfVariants[name]
		if !ok {
			return nil, &exitError{code: 2, err: fmt.Errorf("unknown variant %q (known: %s)", name, knownVariants())}
		}
		v, err := mk()
		if err != nil {
			return nil, err
		}
		if d, ok := v.(*perf.Daemon); ok {
			d.Keep = keep
			d.Binary = binary
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// parseSizes reads a comma-separated list of counts of at least least.
func parseSizes(flag, list, what string, least int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < least {
			return nil, &exitError{code: 2, err: fmt.Errorf("--%s: %q: want %s of at least %d, comma-separated", flag, f, what, least)}
		}
		out = append(out, n)
	}
	return out, nil
}

// rulesVariants are the variants of `trireme perf --rules SIZES`: the
// kernel path and a PSK daemon per policy size.
func rulesVariants(list, binary string, keep bool) ([]perf.Variant, error) {
	sizes, err := parseSizes("rules", list, "rule counts", perf.MinRules)
	if err != nil {
		return nil, err
	}
	vs := []perf.Variant{perf.Kernel{}}
	seen := map[int]bool{}
	for _, n := range sizes {
		if seen[n] {
			return nil, &exitError{code: 2, err: fmt.Errorf("--rules: %d twice", n)}
		}
		seen[n] = true
		pol, err := perf.RulesPolicy(n, perf.DefaultPort)
		if err != nil {
			return nil, err
		}
		vs = append(vs, &perf.Daemon{VariantName: fmt.Sprintf("rules-%d", n), Secrets: perf.PSKSecrets(), Policy: pol, Binary: binary, Keep: keep})
	}
	return vs, nil
}

// runScale is `trireme perf --scale SIZES`.
func runScale(cmd *cobra.Command, list string, flows int, binary string, keep, asJSON bool, rounds int, d time.Duration) error {
	sizes, err := parseSizes("scale", list, "PU counts", 3)
	if err != nil {
		return err
	}
	return runScenario(cmd, binary, keep, asJSON, func(ctx context.Context, v *perf.Daemon, progress func(string)) (*perf.ScaleResult, error) {
		return perf.RunScale(ctx, perf.ScaleConfig{Flows: flows, Sizes: sizes, Rounds: rounds, Duration: d, Variant: v, Progress: progress})
	})
}

// runFlows is `trireme perf --flows SIZES`.
func runFlows(cmd *cobra.Command, list, binary string, keep, asJSON bool, rounds int, d time.Duration) error {
	sizes, err := parseSizes("flows", list, "connection counts", 1)
	if err != nil {
		return err
	}
	return runScenario(cmd, binary, keep, asJSON, func(ctx context.Context, v *perf.Daemon, progress func(string)) (*perf.FlowsResult, error) {
		return perf.RunFlows(ctx, perf.FlowsConfig{Sizes: sizes, Rounds: rounds, Duration: d, Variant: v, Progress: progress})
	})
}

// runSoak is `trireme perf --soak DURATION`.
func runSoak(cmd *cobra.Command, cfg perf.SoakConfig, binary string, keep, asJSON bool) error {
	if cfg.Allowed < 1 || cfg.Denied < 0 || cfg.Held < 0 || cfg.Interval <= 0 {
		return &exitError{code: 2, err: fmt.Errorf("--soak-allowed must be positive, --soak-denied and --soak-held not negative, --soak-interval positive")}
	}
	return runScenario(cmd, binary, keep, asJSON, func(ctx context.Context, v *perf.Daemon, progress func(string)) (*perf.SoakResult, error) {
		cfg.Variant, cfg.Progress = v, progress
		return perf.RunSoak(ctx, cfg)
	})
}

// scenarioResult is what a one-daemon scenario prints.
type scenarioResult interface {
	WriteJSON(io.Writer) error
	WriteTable(io.Writer) error
}

// runScenario runs a one-daemon scenario (--scale, --flows, --soak) with
// a PSK daemon, progress on a terminal, until done or interrupted, and
// prints its result.
func runScenario[R scenarioResult](cmd *cobra.Command, binary string, keep, asJSON bool,
	run func(ctx context.Context, v *perf.Daemon, progress func(string)) (R, error)) error {
	v := &perf.Daemon{VariantName: "psk", Secrets: perf.PSKSecrets(), Binary: binary, Keep: keep}
	var progress func(string)
	if term.IsTerminal(int(os.Stderr.Fd())) {
		progress = func(msg string) { fmt.Fprintf(os.Stderr, "\r\033[K%s", msg) }
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, v, progress)
	if progress != nil {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if d := v.KeptDir(); d != "" {
		fmt.Fprintf(os.Stderr, "daemon files kept in %s\n", d)
	}
	if err != nil {
		return err
	}
	if asJSON {
		return res.WriteJSON(cmd.OutOrStdout())
	}
	return res.WriteTable(cmd.OutOrStdout())
}
