package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

func init() { rootCmd.AddCommand(newDemoCmd()) }

func newDemoCmd() *cobra.Command {
	var examples string
	var offline bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show trireme at work on the examples",
		Long: `demo shows trireme on examples/: policy.yaml and the PUs and external hosts of
pus.yaml.

The live demo (the default; needs root) creates a node (a network namespace
with a bridge; the host's own network is not touched), starts the daemon in
it in PKI mode (a fresh CA and node certificate), makes each host of
pus.yaml a namespace on the node bridge and attaches the PUs with their
labels, starts 'trireme probe serve' in the servers, makes the connections
listed under 'live' in pus.yaml and prints, for each, what the client saw
(connected, refused by RST, timed out) and the decision, reason and rule
from the daemon's flow log. Then it runs 'trireme run --label app=reports'
examples and, when dockerd is installed and the binary is static, starts a
private Docker engine in the node with three labelled containers. Everything
is removed at the end, also on error or ^C.

The offline demo (--offline) decides every connection between the hosts
(each client to each server on each port it serves) with the policy engine
and prints client -> server:port, the verdict, the deciding rules and the
reason.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !offline {
				return runLiveDemo(cmd, examples)
			}
			return runOfflineDemo(cmd.OutOrStdout(), examples)
		},
	}
	cmd.Flags().StringVar(&examples, "examples", "examples", "directory with policy.yaml and pus.yaml")
	cmd.Flags().BoolVar(&offline, "offline", false, "only show the policy engine's decisions (no namespaces, no packets)")
	cmd.Flags().StringVar(&liveResults, "results", "", "write the live demo's rows as JSON to this file")
	cmd.Flags().MarkHidden("results")
	cmd.Flags().BoolVar(&noDocker, "no-docker", false, "skip the Docker part of the live demo")
	return cmd
}

// demoHost is a PU or an external host of pus.yaml.
type demoHost struct {
	Name   string            `yaml:"name"`
	IP     string            `yaml:"ip"`
	Tags   map[string]string `yaml:"tags"`
	Serves []string          `yaml:"serves"`

	addr  netip.Addr
	pu    bool
	ports []policy.PortRange
}

type demoHosts struct {
	PUs      []demoHost `yaml:"pus"`
	External []demoHost `yaml:"external"`
	// Live lists the connections the live demo makes, as
	// "client -> server:tcp/PORT".
	Live []string `yaml:"live"`
}

// loadLiveDemo reads the hosts and the live connections of pus.yaml.
func loadLiveDemo(path string) ([]demoHost, []string, error) {
	hosts, err := loadDemoHosts(path)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var doc demoHosts
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, err)
	}
	return hosts, doc.Live, nil
}

func loadDemoHosts(path string) ([]demoHost, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc demoHosts
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	var hosts []demoHost
	names := map[string]bool{}
	for i, list := range [][]demoHost{doc.PUs, doc.External} {
		for _, h := range list {
			h.pu = i == 0
			if h.Name == "" || names[h.Name] {
				return nil, fmt.Errorf("%s: host %q: missing or duplicate name", path, h.Name)
			}
			names[h.Name] = true
			if h.addr, err = netip.ParseAddr(h.IP); err != nil {
				return nil, fmt.Errorf("%s: host %s: bad ip %q", path, h.Name, h.IP)
			}
			if !h.pu && len(h.Tags) > 0 {
				return nil, fmt.Errorf("%s: external host %s: external hosts have no tags", path, h.Name)
			}
			for _, s := range h.Serves {
				pr, err := policy.ParsePortRange(s)
				if err != nil {
					return nil, fmt.Errorf("%s: host %s: %v", path, h.Name, err)
				}
				if pr.First != pr.Last && pr.Protocol != ipproto.ICMP && pr.Protocol != ipproto.ICMPv6 {
					return nil, fmt.Errorf("%s: host %s: serves %s: give single ports", path, h.Name, s)
				}
				h.ports = append(h.ports, pr)
			}
			hosts = append(hosts, h)
		}
	}
	return hosts, nil
}

func (h *demoHost) endpoint() endpoint {
	ep := endpoint{Name: h.Name, Addr: h.addr, PU: h.pu}
	if h.pu {
		ep.Tags = identity.NewTags(h.Tags)
	}
	return ep
}

func runOfflineDemo(w io.Writer, dir string) error {
	pf := filepath.Join(dir, "policy.yaml")
	s, err := policy.Load(pf)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	e, err := policy.Compile(s)
	if err != nil {
		return err
	}
	hosts, err := loadDemoHosts(filepath.Join(dir, "pus.yaml"))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "trireme offline demo: %s decides every connection between the hosts of %s\n\n",
		pf, filepath.Join(dir, "pus.yaml"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tKIND\tIP\tTAGS\tSERVES")
	for i := range hosts {
		h := &hosts[i]
		kind, tags := "external", "-"
		if h.pu {
			kind, tags = "PU", h.endpoint().Tags.String()
		} else if e.IsTarget(h.addr) {
			kind = "no enforcer (in target networks)"
		}
		if e.IsExcluded(h.addr) {
			kind += ", excluded"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.Name, kind, h.addr, tags, strings.Join(h.Serves, " "))
	}
	tw.Flush()
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT -> SERVER:PORT\tVERDICT\tSERVER INGRESS\tCLIENT EGRESS\tREASON")
	counts := map[string]int{}
	for ci := range hosts {
		for si := range hosts {
			client, server := &hosts[ci], &hosts[si]
			if ci == si || (!client.pu && !server.pu) {
				continue // no enforcer on either side: trireme decides nothing
			}
			for _, pr := range server.ports {
				port := pr.First
				if pr.Protocol == ipproto.ICMP || pr.Protocol == ipproto.ICMPv6 {
					port = 0
				}
				f, err := explainFlow(e, client.endpoint(), server.endpoint(), pr.Protocol, port)
				if err != nil {
					return err
				}
				counts[f.Verdict]++
				reasonText := f.Reason
				if f.DecidedBy == "excluded-network" {
					reasonText = "excluded-network"
				} else if reasonText == "" {
					reasonText = "-"
				}
				fmt.Fprintf(tw, "%s -> %s:%s\t%s\t%s\t%s\t%s\n", client.Name, server.Name, f.Port, strings.ToUpper(f.Verdict),
					demoHalf(&f.Ingress), demoHalf(&f.Egress), reasonText)
			}
		}
	}
	tw.Flush()
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
	}
	fmt.Fprintf(w, "\n%s. Ask why with: trireme policy explain --policy %s --from TAGS|IP --to TAGS|IP --port tcp/80\n",
		strings.Join(parts, ", "), pf)
	if len(counts) == 0 {
		return errors.New("no connections to show: no host serves a port")
	}
	return nil
}

// demoHalf summarizes one half for the table.
func demoHalf(h *half) string {
	if !h.Applies {
		if strings.HasPrefix(h.Note, "no enforcer") {
			return "(no enforcer)"
		}
		return "(bypassed)"
	}
	s := h.Verdict
	switch {
	case h.Rule != nil:
		s += " " + h.Rule.short()
	case h.Reason != "" && h.Reason != "policy-denied":
		s += " " + h.Reason
	default:
		s += " (no rule)"
	}
	if h.Observed != nil && (h.Rule == nil || h.Observed.short() != h.Rule.short()) {
		s += ", observed " + h.Observed.short()
	}
	return s
}
