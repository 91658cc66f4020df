package main

// `trireme flows`: query and follow the flows of a running daemon (its ring
// of recent records, over the control socket), like `hubble observe`.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/node"
)

func init() { rootCmd.AddCommand(flowsCmd()) }

func flowsCmd() *cobra.Command {
	var (
		socket                     string
		pus, peers, ports, protos  []string
		verdicts, reasons, rules   []string
		puSel, peerSel, dir, since string
		last                       int
		follow, asJSON             bool
		output                     string
	)
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "Query and follow the flows of the running daemon",
		Long: `Prints the flow records the daemon keeps in memory (observe.flowRing; the
flow log stays the durable record), oldest first, with the verdict and the
rule and reason that decided. Filters of different kinds must all match;
repeating one gives alternatives (--verdict denied --verdict rejected).

  --pu NAME|ID          the local PU          --pu-selector SEL   its tags
  --peer IP|CIDR        the remote address    --peer-selector SEL its verified tags
  --port N|N-M          the server's port     --proto tcp|udp|icmp|ip-N
  --verdict allowed|denied|rejected|none|observed
  --reason NAME         a drop reason (docs/reasons.md)
  --rule NAME           a policy's name, a rule's name, or policy/direction/index
  --direction ingress|egress                 (the local PU's view)
  --since 5m|RFC3339    --last N             --follow (-f)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := url.Values{}
			add := func(k string, vs ...string) {
				for _, s := range vs {
					v.Add(k, s)
				}
			}
			add("pu", pus...)
			add("peer", peers...)
			add("port", ports...)
			add("proto", protos...)
			add("verdict", verdicts...)
			add("reason", reasons...)
			add("rule", rules...)
			if puSel != "" {
				add("pu-selector", puSel)
			}
			if peerSel != "" {
				add("peer-selector", peerSel)
			}
			if dir != "" {
				add("direction", dir)
			}
			if since != "" {
				add("since", since)
			}
			if last < 0 {
				return &exitError{code: 2, err: fmt.Errorf("--last %d: want a number of records", last)}
			}
			// The query is checked here (the daemon checks it again): a
			// bad filter is a usage error, and a relative --since is
			// resolved on this clock.
			q, err := node.ParseFlowQuery(v, time.Now())
			if err != nil {
				return &exitError{code: 2, err: flagError(err)}
			}
			q.Last, q.Follow = last, follow
			var p flowPrinter
			switch {
			case asJSON || output == "json":
				p = &jsonFlows{enc: json.NewEncoder(os.Stdout)}
			case output == "" || output == "table" || output == "wide":
				p = newTableFlows(os.Stdout, output == "wide", follow)
			default:
				return &exitError{code: 2, err: fmt.Errorf("-o %q: want table, wide or json", output)}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := node.NewClient(socket).Flows(ctx, q, p.print); err != nil {
				return err
			}
			return p.flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", node.DefaultSocket, "daemon control socket")
	f.StringArrayVar(&pus, "pu", nil, "the local PU's name or ID")
	f.StringVar(&puSel, "pu-selector", "", "a selector over the local PU's tags (app=web,env in (prod))")
	f.StringArrayVar(&peers, "peer", nil, "the peer's address or network (10.0.0.5, 10.0.0.0/24)")
	f.StringVar(&peerSel, "peer-selector", "", "a selector over the peer's verified tags")
	f.StringArrayVar(&ports, "port", nil, "the server's port or port range")
	f.StringArrayVar(&protos, "proto", nil, "the protocol (tcp, udp, sctp, icmp, icmpv6, ip-N)")
	f.StringArrayVar(&verdicts, "verdict", nil, "allowed, denied, rejected, none or observed")
	f.StringArrayVar(&reasons, "reason", nil, "a drop reason")
	f.StringArrayVar(&rules, "rule", nil, "a policy, a rule name, or policy/direction/index")
	f.StringVar(&dir, "direction", "", "ingress or egress")
	f.StringVar(&since, "since", "", "records decided since this time (RFC 3339) or for this long (5m)")
	f.IntVar(&last, "last", 0, "only the newest N matching records")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new records as they come")
	f.BoolVar(&asJSON, "json", false, "one JSON object per line")
	f.StringVarP(&output, "output", "o", "", "table (default), wide or json")
	return cmd
}

// flagError names the flag of a query parameter's error ("pu-selector:
// ..." becomes "--pu-selector: ...").
func flagError(err error) error {
	msg := err.Error()
	if strings.HasPrefix(msg, "unknown parameter") {
		return err
	}
	return fmt.Errorf("--%s", msg)
}

type flowPrinter interface {
	print(*node.Flow) error
	flush() error
}

type jsonFlows struct{ enc *json.Encoder }

func (j *jsonFlows) print(f *node.Flow) error { return j.enc.Encode(f) }
func (j *jsonFlows) flush() error             { return nil }

// tableFlows prints an aligned table: all at once when the answer ends, or
// line by line (fixed widths) when following.
type tableFlows struct {
	w      io.Writer
	tw     *tabwriter.Writer
	wide   bool
	follow bool
	header bool
}

func newTableFlows(w io.Writer, wide, follow bool) *tableFlows {
	return &tableFlows{w: w, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), wide: wide, follow: follow}
}

// flowColumns are the table's columns and, for a followed table, their
// widths.
var flowColumns = []struct {
	name  string
	width int
	wide  bool
}{
	{"TIME", 12, false}, {"PU", 16, false}, {"DIR", 7, false}, {"PEER", 22, false}, {"SERVICE", 11, false},
	{"VERDICT", 8, false}, {"REASON", 20, false}, {"RULE", 24, false}, {"END", 11, false},
	{"CLIENT", 21, true}, {"SERVER", 21, true}, {"PEER-TAGS", 30, true}, {"PKTS-OUT/IN", 13, true}, {"BYTES-OUT/IN", 15, true},
}

func (t *tableFlows) row(cells []string) error {
	if t.follow {
		var b strings.Builder
		for i, c := range cells {
			if i == len(cells)-1 {
				b.WriteString(c)
				break
			}
			fmt.Fprintf(&b, "%-*s ", flowColumns[i].width, c)
		}
		b.WriteByte('\n')
		_, err := io.WriteString(t.w, b.String())
		return err
	}
	_, err := fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
	return err
}

func (t *tableFlows) print(f *node.Flow) error {
	if !t.header {
		t.header = true
		var names []string
		for _, c := range flowColumns {
			if !c.wide || t.wide {
				names = append(names, c.name)
			}
		}
		if err := t.row(names); err != nil {
			return err
		}
	}
	pu := f.LocalName
	if pu == "" {
		pu = f.Local.ID
	}
	peer := f.Remote.IP.String()
	switch {
	case f.RemoteName != "":
		peer = f.RemoteName + " (" + peer + ")"
	case f.Remote.External:
		peer += " (ext)"
	}
	service := f.Proto.String()
	if f.Proto.HasPorts() {
		service += "/" + strconv.Itoa(int(f.Server.Port()))
	}
	verdict := f.Verdict
	if f.Observed != nil {
		verdict += "*"
	}
	rule := "-"
	if f.Rule != nil {
		rule = ruleLabel(f.Rule.Policy, f.Rule.Direction, f.Rule.Index, f.Rule.Name)
	}
	if f.Observed != nil {
		rule += " obs:" + ruleLabel(f.Observed.Policy, f.Observed.Direction, f.Observed.Index, f.Observed.Name)
	}
	reason := f.Reason
	if reason == "" || reason == "none" {
		reason = "-"
	}
	if f.Count > 1 {
		reason += fmt.Sprintf(" x%d", f.Count)
	}
	cells := []string{f.Time.Local().Format("15:04:05.000"), pu, f.Direction, peer, service, verdict, reason, rule, string(f.End)}
	if t.wide {
		tags := strings.Join(f.Remote.Tags, ",")
		if tags == "" {
			tags = "-"
		}
		cells = append(cells, f.Client.String(), f.Server.String(), tags,
			fmt.Sprintf("%d/%d", f.PacketsOut, f.PacketsIn), fmt.Sprintf("%d/%d", f.BytesOut, f.BytesIn))
	}
	return t.row(cells)
}

func ruleLabel(policy, dir string, index int, name string) string {
	s := fmt.Sprintf("%s/%s/%d", policy, dir, index)
	if name != "" {
		s += " (" + name + ")"
	}
	return s
}

func (t *tableFlows) flush() error {
	if t.follow {
		return nil
	}
	return t.tw.Flush()
}
