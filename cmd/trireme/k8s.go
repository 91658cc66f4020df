package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/policy"
)

func init() { rootCmd.AddCommand(newK8sCmd()) }

// newK8sCmd builds `trireme k8s` (fresh flag state each time, for tests).
func newK8sCmd() *cobra.Command {
	k8sCmd := &cobra.Command{
		Use:   "k8s",
		Short: "Kubernetes NetworkPolicy: translate into trireme policy, show reachability",
		Long: `Reads NetworkPolicy (networking.k8s.io/v1), Namespace and Pod objects (v1), and Lists of
them, from a manifest file or every *.yaml, *.yml and *.json file of a directory, and
translates the policies with Kubernetes semantics into trireme policy. See docs/kubernetes.md.`,
	}

	var targets, excluded []string
	options := func() (k8s.Options, error) {
		var o k8s.Options
		for _, s := range targets {
			p, err := policy.ParseCIDR(s)
			if err != nil {
				return o, fmt.Errorf("--target-network: %v", err)
			}
			o.TargetNetworks = append(o.TargetNetworks, p)
		}
		for _, s := range excluded {
			p, err := policy.ParseCIDR(s)
			if err != nil {
				return o, fmt.Errorf("--excluded-network: %v", err)
			}
			o.ExcludedNetworks = append(o.ExcludedNetworks, p)
		}
		return o, nil
	}
	load := func(path string) (*k8s.Translation, error) {
		o, err := options()
		if err != nil {
			return nil, err
		}
		c, err := k8s.Load(path)
		if err != nil {
			return nil, err
		}
		return k8s.Translate(c, o)
	}
	addNetFlags := func(cmd *cobra.Command) {
		cmd.Flags().StringArrayVar(&targets, "target-network", nil, "target network CIDR (repeatable; default: every pod's address)")
		cmd.Flags().StringArrayVar(&excluded, "excluded-network", nil, "excluded network CIDR (repeatable)")
	}

	translate := &cobra.Command{
		Use:   "translate DIR|FILE",
		Short: "Print the trireme policy equivalent to the NetworkPolicies, for the pods given",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := load(args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			text, err := k8s.MarshalSet(tr.Set)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "# trireme policy translated from the Kubernetes objects in %s\n", args[0])
			fmt.Fprintf(w, "# (%d pods, %d policies); pod identity tags:\n", len(tr.PUs), len(tr.Set.Policies))
			for _, pu := range tr.PUs {
				fmt.Fprintf(w, "#   %s %s: %s\n", pu.ID(), addrs(pu.IPs), pu.Tags)
			}
			_, err = w.Write(text)
			return err
		},
	}
	addNetFlags(translate)

	var ports []string
	var asJSON bool
	reach := &cobra.Command{
		Use:   "reach DIR|FILE",
		Short: "Print who can connect to whom among the pods, per port (the cyclonus truth table)",
		Long: `Decides every ordered pair of pods (a pod to itself included) with the translated policy, as
the enforcers do: the server's ingress and the client's egress must both allow. Without --port,
every port the pods declare is probed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := load(args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			probes, err := probePorts(ports, tr)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			eng, err := policy.Compile(tr.Set)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			var out []reachJSON
			for i, pr := range probes {
				var m *k8s.Matrix
				if pr.name != "" {
					m = k8s.ReachNamed(eng, tr.PUs, pr.proto, pr.name)
				} else {
					m = k8s.Reach(eng, tr.PUs, pr.proto, pr.port)
				}
				if asJSON {
					out = append(out, toReachJSON(m))
					continue
				}
				if i > 0 {
					fmt.Fprintln(w)
				}
				if err := m.Format(w); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			return nil
		},
	}
	addNetFlags(reach)
	reach.Flags().StringArrayVar(&ports, "port", nil, "port to probe, e.g. tcp/80, udp/53, sctp/9, or a named port such as tcp/http (repeatable)")
	reach.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	k8sCmd.AddCommand(translate, reach)
	return k8sCmd
}

func addrs(ips []netip.Addr) string {
	if len(ips) == 0 {
		return "(no IP)"
	}
	s := make([]string, len(ips))
	for i, a := range ips {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// probe is one --port: a number, or a named port resolved on each server.
type probe struct {
	proto ipproto.Proto
	port  uint16
	name  string
}

// probePorts parses --port values (tcp/80, udp/53, tcp/http), or collects
// every numeric port the pods declare.
func probePorts(flags []string, tr *k8s.Translation) ([]probe, error) {
	var out []probe
	for _, s := range flags {
		proto, name, ok := strings.Cut(s, "/")
		// Port names hold a letter; numbers and ranges do not.
		if ok && strings.ContainsFunc(name, func(r rune) bool { return (r < '0' || r > '9') && r != '-' }) {
			pr, err := policy.ParsePortRange(proto)
			if err != nil || (pr.Protocol != ipproto.TCP && pr.Protocol != ipproto.UDP && pr.Protocol != ipproto.SCTP) {
				return nil, fmt.Errorf("--port %q: want tcp, udp or sctp before the port", s)
			}
			if msgs := validation.IsValidPortName(name); len(msgs) > 0 {
				return nil, fmt.Errorf("--port %q: bad port name: %s", s, strings.Join(msgs, "; "))
			}
			out = append(out, probe{proto: pr.Protocol, name: name})
			continue
		}
		pr, err := policy.ParsePortRange(s)
		if err != nil {
			return nil, fmt.Errorf("--port: %v", err)
		}
		if pr.First != pr.Last || pr.First == 0 {
			return nil, fmt.Errorf("--port %q: want one port, e.g. tcp/80 or tcp/http", s)
		}
		out = append(out, probe{proto: pr.Protocol, port: pr.First})
	}
	if len(flags) > 0 {
		return out, nil
	}
	for _, pu := range tr.PUs {
		for _, cp := range pu.Ports {
			p := probe{proto: cp.Protocol, port: cp.Port}
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the pods declare no container port: give --port")
	}
	slices.SortFunc(out, func(a, b probe) int {
		if a.proto != b.proto {
			return int(a.proto) - int(b.proto)
		}
		return int(a.port) - int(b.port)
	})
	return out, nil
}

type reachJSON struct {
	Port string   `json:"port"`
	Pods []string `json:"pods"`
	// [from][to]
	Reachable [][]bool `json:"reachable"`
	Ingress   [][]bool `json:"ingress"`
	Egress    [][]bool `json:"egress"`
}

func toReachJSON(m *k8s.Matrix) reachJSON {
	r := reachJSON{Port: m.Label()}
	for i := range m.PUs {
		r.Pods = append(r.Pods, m.PUs[i].ID())
	}
	for _, row := range m.Cells {
		var re, in, eg []bool
		for j := range row {
			re = append(re, row[j].Allowed())
			in = append(in, row[j].Ingress.Allowed())
			eg = append(eg, row[j].Egress.Allowed())
		}
		r.Reachable, r.Ingress, r.Egress = append(r.Reachable, re), append(r.Ingress, in), append(r.Egress, eg)
	}
	return r
}
