package main

import (
	"fmt"
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
headline), then as median and range over the rounds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if scale != "" {
				return runScale(cmd, scale, flows, daemon, keep, asJSON)
			}
			if soak.Duration > 0 {
				return runSoak(cmd, soak, daemon, keep, asJSON)
			}
			topo, err := perf.ParseTopology(topology)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			var vs []perf.Variant
			for _, name := range strings.Split(variants, ",") {
				name = strings.TrimSpace(name)
				mk, ok := perfVariants[name]
				if !ok {
					return &exitError{code: 2, err: fmt.Errorf("unknown variant %q (known: %s)", name, knownVariants())}
				}
				v, err := mk()
				if err != nil {
					return err
				}
				if d, ok := v.(*perf.Daemon); ok {
					d.Keep = keep
					d.Binary = daemon
				}
				vs = append(vs, v)
			}
			if rounds < 1 || duration <= 0 || clients < 1 || streams < 1 {
				return &exitError{code: 2, err: fmt.Errorf("--rounds, --duration, --clients and --streams must be positive")}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg := perf.Config{
				Topology: topo, Variants: vs, Rounds: rounds, Duration: duration,
				Clients: clients, Streams: streams, NoTimeWaitReuse: !twReuse,
				ProfileDir: profDir,
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
	f.IntVar(&flows, "scale-flows", 0, "with --scale: authorized flows written into the kernel before the restart")
	f.StringVar(&iperf3, "iperf3", "auto", "iperf3 binary for a cross-check of bulk throughput: auto (if installed), off, or a path")
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

// runScale is `trireme perf --scale SIZES`.
func runScale(cmd *cobra.Command, sizes string, flows int, binary string, keep, asJSON bool) error {
	cfg := perf.ScaleConfig{Flows: flows}
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 3 {
			return &exitError{code: 2, err: fmt.Errorf("--scale: %q: want PU counts of at least 3, comma-separated", f)}
		}
		cfg.Sizes = append(cfg.Sizes, n)
	}
	cfg.Variant = &perf.Daemon{VariantName: "psk", Secrets: perf.PSKSecrets(), Binary: binary, Keep: keep}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		cfg.Progress = func(msg string) { fmt.Fprintf(os.Stderr, "\r\033[K%s", msg) }
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := perf.RunScale(ctx, cfg)
	if cfg.Progress != nil {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if d := cfg.Variant.KeptDir(); d != "" {
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

// runSoak is `trireme perf --soak DURATION`.
func runSoak(cmd *cobra.Command, cfg perf.SoakConfig, binary string, keep, asJSON bool) error {
	if cfg.Allowed < 1 || cfg.Denied < 0 || cfg.Held < 0 || cfg.Interval <= 0 {
		return &exitError{code: 2, err: fmt.Errorf("--soak-allowed must be positive, --soak-denied and --soak-held not negative, --soak-interval positive")}
	}
	cfg.Variant = &perf.Daemon{VariantName: "psk", Secrets: perf.PSKSecrets(), Binary: binary, Keep: keep}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		cfg.Progress = func(msg string) { fmt.Fprintf(os.Stderr, "\r\033[K%s", msg) }
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := perf.RunSoak(ctx, cfg)
	if cfg.Progress != nil {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if d := cfg.Variant.KeptDir(); d != "" {
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
