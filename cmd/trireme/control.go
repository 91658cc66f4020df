package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/node"
)

// The control commands talk to a running daemon over its socket.
var socketPath string

func init() {
	pu := &cobra.Command{Use: "pu", Short: "List, attach and detach processing units"}
	pu.PersistentFlags().StringVar(&socketPath, "socket", node.DefaultSocket, "daemon control socket")

	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the PUs the daemon enforces",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pus, err := node.NewClient(socketPath).ListPUs()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(pus)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tKIND\tSTATE\tIPS\tDROPS\tTAGS")
			for _, p := range pus {
				ips := make([]string, len(p.IPs))
				for i, ip := range p.IPs {
					ips[i] = ip.String()
				}
				drops := "-"
				if len(p.Drops) > 0 {
					var ds []string
					for _, r := range slices.Sorted(maps.Keys(p.Drops)) {
						ds = append(ds, fmt.Sprintf("%s=%d", r, p.Drops[r]))
					}
					drops = strings.Join(ds, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Name, p.Kind, p.State,
					strings.Join(ips, ","), drops, identity.NewTags(p.Tags))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var labels, tags []string
	var name string
	attach := &cobra.Command{
		Use:   "attach NETNS",
		Short: "Police a network namespace (a name under /run/netns or a path) as a PU",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := labelMap(labels)
			if err != nil {
				return err
			}
			tm, err := tagMap(tags)
			if err != nil {
				return err
			}
			p, err := node.NewClient(socketPath).AttachPU(node.AttachRequest{NetNS: args[0], Name: name, Labels: m, Tags: tm})
			if err != nil {
				return err
			}
			fmt.Println(p.ID)
			return nil
		},
	}
	attach.Flags().StringArrayVarP(&labels, "label", "l", nil, "identity label key=value (repeatable)")
	attach.Flags().StringArrayVar(&tags, "tag", nil, "identity tag key=value set by an orchestrator integration; reserved keys (@sys:namespace, @ns:...) allowed (repeatable)")
	attach.Flags().StringVar(&name, "name", "", "PU name (default: the namespace name)")

	detach := &cobra.Command{
		Use:   "detach ID",
		Short: "Stop policing a PU",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return node.NewClient(socketPath).DetachPU(args[0])
		},
	}
	pu.AddCommand(ls, attach, detach)

	exclude := &cobra.Command{Use: "exclude", Short: "Add or remove excluded networks at runtime"}
	exclude.PersistentFlags().StringVar(&socketPath, "socket", node.DefaultSocket, "daemon control socket")
	exclude.AddCommand(&cobra.Command{
		Use: "add IP|CIDR", Short: "Exclude an address or network from every check", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := node.ParsePrefixOrAddr(args[0])
			if err != nil {
				return err
			}
			return node.NewClient(socketPath).AddExcluded(p)
		},
	}, &cobra.Command{
		Use: "rm IP|CIDR", Short: "Remove a runtime exclusion", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := node.ParsePrefixOrAddr(args[0])
			if err != nil {
				return err
			}
			return node.NewClient(socketPath).RemoveExcluded(p)
		},
	})

	var statsJSON, waitReady bool
	var readyTimeout time.Duration
	stats := &cobra.Command{
		Use:   "stats [--wait-ready [--timeout D]]",
		Short: "Show the daemon's counters, drops by reason and policy status",
		Long: `Show the daemon's counters, drops by reason and policy status.

With --wait-ready it first waits (up to --timeout) until the daemon enforces:
its control socket answers /readyz (plumbed, the PUs of the previous run
restored, the policy loaded). It exits 1 with the daemon's last answer if
it is not ready in time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := node.NewClient(socketPath)
			if waitReady {
				if err := waitUntilReady(cmd.Context(), c, readyTimeout); err != nil {
					return err
				}
			}
			s, err := c.Stats()
			if err != nil {
				return err
			}
			if statsJSON {
				return printJSON(s)
			}
			fmt.Printf("node %s, up since %s, %d PUs, %d flows\n", s.Node, s.Started.Format("2006-01-02 15:04:05"), s.PUs, s.Flows)
			fmt.Printf("policy %s: %d policies, loaded %s\n", s.Policy.File, s.Policy.Policies, s.Policy.LoadedAt.Format("15:04:05"))
			if s.Policy.LastError != "" {
				fmt.Printf("policy reload FAILED at %s (previous policy stays in force):\n%s\n", s.Policy.ErrorAt.Format("15:04:05"), s.Policy.LastError)
			}
			if k := s.Kubernetes; k != nil {
				printKubernetes(k)
			}
			printFlowTable(s)
			fmt.Printf("flow ring: %d of %d records (%d since start; trireme flows)\n", s.FlowRing.Records, s.FlowRing.Size, s.FlowRing.Total)
			printCounters("counters", s.Counters)
			printCounters("drops", s.Drops)
			return nil
		},
	}
	stats.Flags().StringVar(&socketPath, "socket", node.DefaultSocket, "daemon control socket")
	stats.Flags().BoolVar(&statsJSON, "json", false, "print JSON")
	stats.Flags().BoolVar(&waitReady, "wait-ready", false, "wait until the daemon enforces (its /readyz) before printing")
	stats.Flags().DurationVar(&readyTimeout, "timeout", time.Minute, "with --wait-ready: how long to wait")

	rootCmd.AddCommand(pu, exclude, stats)
}

// waitUntilReady polls the daemon's /readyz until it answers 200: a socket
// not there yet or a 503 is waited for, up to timeout.
func waitUntilReady(ctx context.Context, c *node.Client, timeout time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := c.Ready()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("daemon not ready after %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// printFlowTable shows the flow table's fill and the PUs holding the most
// of it (all of them with --json).
func printFlowTable(s node.Stats) {
	ft := s.FlowTable
	pct := func(n, of int) float64 {
		if of == 0 {
			return 0
		}
		return 100 * float64(n) / float64(of)
	}
	fmt.Printf("flow table: %d of %d flows (%.1f%%), %d per PU at most, %d evictions\n",
		ft.Flows, ft.Capacity, pct(ft.Flows, ft.Capacity), ft.PerPU, ft.Evictions)
	const top = 10
	for i, p := range s.PUFlows {
		if i == top {
			fmt.Printf("  ... %d more PUs (trireme stats --json)\n", len(s.PUFlows)-top)
			break
		}
		fmt.Printf("  %-24s %8d flows (%5.1f%% of its share)  %d refused  %d packets over budget\n", p.Name, p.Flows, pct(p.Flows, ft.PerPU), p.Refused, p.OverBudget)
	}
}

func printCounters(title string, m map[string]uint64) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Println(title + ":")
	for _, k := range keys {
		fmt.Printf("  %-24s %d\n", k, m[k])
	}
}

func labelMap(kvs []string) (map[string]string, error) {
	tags, err := identity.ParseTags(kvs)
	if err != nil {
		return nil, err
	}
	for _, t := range tags {
		if err := identity.CheckLabel(t.Key, t.Value, false); err != nil {
			return nil, fmt.Errorf("label %q: %w", t, err)
		}
	}
	return tags.Map(), nil
}

// tagMap parses --tag key=value flags: reserved keys allowed (the caller
// is trusted: the control socket is root-only).
func tagMap(kvs []string) (map[string]string, error) {
	tags, err := identity.ParseTags(kvs)
	if err != nil {
		return nil, err
	}
	return tags.Map(), nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printKubernetes prints the Kubernetes source's state: whether the API
// server is reachable (while it is not, the node enforces what it last knew).
func printKubernetes(k *node.KubernetesStatus) {
	state := "API server reachable"
	if !k.Connected {
		state = "API server UNREACHABLE: enforcing the last known pods and policies"
	}
	fmt.Printf("kubernetes node %s: %s since %s; %d pods enforced, %d NetworkPolicies, synced %v, last sync %s\n",
		k.NodeName, state, k.Since.Format("15:04:05"), k.Pods, k.NetworkPolicies, k.Synced, k.LastSync.Format("15:04:05"))
	if k.LastError != "" && !k.Connected {
		fmt.Printf("  last error: %s\n", k.LastError)
	}
	if k.PolicyError != "" {
		fmt.Printf("  translation FAILED (previous policy stays in force): %s\n", k.PolicyError)
	}
	for _, pod := range slices.Sorted(maps.Keys(k.Unenforced)) {
		fmt.Printf("  pod %s NOT enforced: %s\n", pod, k.Unenforced[pod])
	}
}
