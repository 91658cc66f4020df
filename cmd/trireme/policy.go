package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
)

func init() { rootCmd.AddCommand(newPolicyCmd()) }

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate policy files and explain decisions",
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyExplainCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policy files; print every problem as file:line:col: field: what is wrong",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bad := 0
			for _, file := range args {
				s, err := policy.Load(file)
				if err != nil {
					bad++
					fmt.Fprintln(cmd.ErrOrStderr(), err)
					continue
				}
				rules := 0
				for _, p := range s.Policies {
					rules += len(p.Ingress) + len(p.Egress)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d policies, %d rules, %d target networks, %d excluded networks)\n",
					file, len(s.Policies), rules, len(s.TargetNetworks), len(s.ExcludedNetworks))
			}
			if bad > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}

func newPolicyExplainCmd() *cobra.Command {
	var file, from, to, port, fromIP, toIP string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "explain --policy FILE --from TAGS|IP --to TAGS|IP --port tcp/80",
		Short: "Explain why a connection is allowed or denied: server ingress, client egress, verdict",
		Long: `Explain decides one connection from --from (the client) to --to (the server)
as trireme would: the server's ingress rules and the client's egress rules,
then the verdict (allowed only when both halves allow).

TAGS is a comma-separated list of key=value (a PU inside the target
networks, which presents its tags in a token); IP is a host without tags
(outside the target networks it is matched by CIDR rules only; inside them a
host that sends no token is denied with missing-token). --from-ip/--to-ip
give a PU's address, for CIDR rules. Tokens ride on TCP handshakes only:
UDP and other datagram flows are matched by address, as the dataplane does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := policy.Load(file)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			e, err := policy.Compile(s)
			if err != nil {
				return err
			}
			client, err := parseEndpoint("--from", from, fromIP)
			if err != nil {
				return err
			}
			server, err := parseEndpoint("--to", to, toIP)
			if err != nil {
				return err
			}
			proto, p, err := parseFlowPort(port)
			if err != nil {
				return err
			}
			f, err := explainFlow(e, client, server, proto, p)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(f)
			}
			f.print(cmd.OutOrStdout())
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&file, "policy", "", "policy file")
	fl.StringVar(&from, "from", "", "client: TAGS (k=v,k=v) or IP")
	fl.StringVar(&to, "to", "", "server: TAGS (k=v,k=v) or IP")
	fl.StringVar(&port, "port", "", "protocol and destination port, e.g. tcp/80, udp/53, icmp")
	fl.StringVar(&fromIP, "from-ip", "", "the client PU's address (for CIDR rules)")
	fl.StringVar(&toIP, "to-ip", "", "the server PU's address (for CIDR rules)")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	for _, f := range []string{"policy", "from", "to", "port"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

// endpoint is one side of a connection: a PU (tags, maybe an address) or a
// host known only by its address.
type endpoint struct {
	Name string        `json:"name,omitempty"`
	Tags identity.Tags `json:"-"`
	PU   bool          `json:"pu"`
	Addr netip.Addr    `json:"ip,omitzero"`
}

func (ep endpoint) MarshalJSON() ([]byte, error) {
	type plain endpoint
	out := struct {
		plain
		Tags []string `json:"tags,omitempty"`
	}{plain(ep), ep.Tags.Strings()}
	return json.Marshal(out)
}

func (ep endpoint) String() string {
	var b strings.Builder
	if ep.Name != "" {
		b.WriteString(ep.Name)
	}
	if ep.PU {
		fmt.Fprintf(&b, "[%s]", ep.Tags)
	}
	if ep.Addr.IsValid() {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(ep.Addr.String())
	}
	return b.String()
}

func parseEndpoint(flag, value, ip string) (endpoint, error) {
	if a, err := netip.ParseAddr(value); err == nil {
		if ip != "" {
			return endpoint{}, fmt.Errorf("%s is an address; %s-ip is for PUs given by tags", flag, flag)
		}
		return endpoint{Addr: a.Unmap()}, nil
	}
	tags, err := identity.ParseTags(strings.Split(value, ","))
	if err != nil {
		return endpoint{}, fmt.Errorf("%s: want TAGS (k=v,k=v) or an IP: %v", flag, err)
	}
	ep := endpoint{Tags: tags, PU: true}
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return endpoint{}, fmt.Errorf("%s-ip: bad address %q", flag, ip)
		}
		ep.Addr = a.Unmap()
	}
	return ep, nil
}

// parseFlowPort parses one destination port: "tcp/80", "udp/53", "icmp".
func parseFlowPort(s string) (ipproto.Proto, uint16, error) {
	pr, err := policy.ParsePortRange(s)
	if err != nil {
		return 0, 0, fmt.Errorf("--port: %v", err)
	}
	if pr.Protocol == ipproto.ICMP || pr.Protocol == ipproto.ICMPv6 {
		return pr.Protocol, 0, nil
	}
	if pr.First != pr.Last {
		return 0, 0, fmt.Errorf("--port %s: give one port, e.g. %s/80", s, pr.Protocol)
	}
	return pr.Protocol, pr.First, nil
}

// half is one side's decision: the server's ingress or the client's egress.
type half struct {
	Applies  bool     `json:"applies"`          // false: that side runs no enforcer
	Note     string   `json:"note,omitempty"`   // why it does not apply, or a special verdict
	Policies []string `json:"policies"`         // policies selecting the PU
	Verdict  string   `json:"verdict"`          // allow, reject, deny
	Reason   string   `json:"reason,omitempty"` // a reason code name
	Rule     *ruleOut `json:"rule,omitempty"`
	Observed *ruleOut `json:"observed,omitempty"`
	Log      bool     `json:"log,omitempty"`

	allowed bool
}

type ruleOut struct {
	Policy    string `json:"policy"`
	Direction string `json:"direction"`
	Index     int    `json:"index"`
	Name      string `json:"name,omitempty"`
	Action    string `json:"action"`
	Observe   string `json:"observe,omitempty"`
	Log       bool   `json:"log,omitempty"`
	Pos       string `json:"pos"`
}

func newRuleOut(r *policy.RuleRef) *ruleOut {
	if r == nil {
		return nil
	}
	out := &ruleOut{Policy: r.Policy, Direction: r.Direction.String(), Index: r.Index, Name: r.Name,
		Action: r.Action.String(), Log: r.Log, Pos: r.Pos.String()}
	if r.Observe != policy.Enforce {
		out.Observe = r.Observe.String()
	}
	return out
}

func (r *ruleOut) String() string {
	if r == nil {
		return "-"
	}
	s := fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Index)
	if r.Name != "" {
		s += fmt.Sprintf(" %q", r.Name)
	}
	s += " " + r.Action
	if r.Observe != "" {
		s += " (observe: " + r.Observe + ")"
	}
	return s + " at " + r.Pos
}

// short names a rule in tables: policy/name or policy/ingress[i].
func (r *ruleOut) short() string {
	if r == nil {
		return ""
	}
	if r.Name != "" {
		return r.Policy + "/" + r.Name
	}
	return fmt.Sprintf("%s/%s[%d]", r.Policy, r.Direction, r.Index)
}

// flow is the explanation of one connection.
type flow struct {
	Notes     []string `json:"notes,omitempty"`
	From      endpoint `json:"from"`
	To        endpoint `json:"to"`
	Port      string   `json:"port"`
	Ingress   half     `json:"serverIngress"`
	Egress    half     `json:"clientEgress"`
	Verdict   string   `json:"verdict"`
	Reason    string   `json:"reason,omitempty"`
	DecidedBy string   `json:"decidedBy,omitempty"` // which half denied, or "excluded-network"
}

func portString(proto ipproto.Proto, port uint16) string {
	if proto == ipproto.ICMP || proto == ipproto.ICMPv6 {
		return proto.String()
	}
	return fmt.Sprintf("%s/%d", proto, port)
}

// explainFlow decides a connection from client to server the way the
// enforcers on both sides do (policy.Engine.Decide, docs/policy.md).
func explainFlow(e *policy.Engine, client, server endpoint, proto ipproto.Proto, port uint16) (*flow, error) {
	if !client.PU && !server.PU {
		return nil, errors.New("neither side is a PU (give TAGS for --from or --to): no enforcer decides this connection")
	}
	f := &flow{From: client, To: server, Port: portString(proto, port)}
	for _, ep := range []struct {
		flag string
		ep   endpoint
	}{{"--from", client}, {"--to", server}} {
		switch {
		case ep.ep.PU && !ep.ep.Addr.IsValid():
			f.Notes = append(f.Notes, fmt.Sprintf("%s has no address (%s-ip): CIDR rules cannot match it", ep.flag, ep.flag))
		case ep.ep.PU && !e.IsTarget(ep.ep.Addr) && !e.IsExcluded(ep.ep.Addr):
			f.Notes = append(f.Notes, fmt.Sprintf("%s is outside the target networks: peers will not exchange tokens with it", ep.ep.Addr))
		}
	}
	if proto != ipproto.TCP && proto != ipproto.UDP && client.PU && server.PU {
		f.Notes = append(f.Notes, fmt.Sprintf("%s flows carry no identity token: each enforcer matches its peer by address only (CIDR rules)", proto))
	}
	if proto != ipproto.TCP && proto != ipproto.UDP && port != 0 {
		f.Notes = append(f.Notes, fmt.Sprintf("the dataplane reads no %s ports: rules with %s ports cannot match", proto, proto))
	}
	d := e.Decide(policy.Conn{Client: client.decideEndpoint(e), Server: server.decideEndpoint(e), Proto: proto, Port: port})
	f.Ingress = newHalf(e, &d.Ingress, server, client)
	f.Egress = newHalf(e, &d.Egress, client, server)
	f.Verdict = d.Action.String()
	if d.Reason != reason.None {
		f.Reason = d.Reason.String()
	}
	switch {
	case d.DecidedBy != policy.Nobody:
		f.DecidedBy = d.DecidedBy.String()
	case d.Ingress.Basis == policy.PeerExcluded || d.Egress.Basis == policy.PeerExcluded:
		f.DecidedBy = "excluded-network"
	}
	return f, nil
}

func (ep endpoint) decideEndpoint(e *policy.Engine) policy.Endpoint {
	if ep.PU {
		return e.PU(ep.Tags, ep.Addr)
	}
	return policy.Host(ep.Addr)
}

// newHalf renders the decision of local's enforcer about peer.
func newHalf(e *policy.Engine, d *policy.Half, local, peer endpoint) half {
	switch d.Basis {
	case policy.NoEnforcer:
		return half{Note: "no enforcer on this side (not a PU)", Verdict: "allow", allowed: true}
	case policy.PeerExcluded:
		return half{Note: "the peer is in the excluded networks: no check", Verdict: "allow", allowed: true}
	}
	h := half{Applies: true, Policies: d.Policies, Verdict: d.Action.String(), allowed: d.Allowed()}
	if h.Policies == nil {
		h.Policies = []string{}
	}
	if d.Reason != reason.None {
		h.Reason = d.Reason.String()
	}
	if d.Basis == policy.NoToken {
		// Inside the target networks every host must run an enforcer: no
		// token is a failure whatever CIDR rules say.
		switch {
		case !peer.PU:
			h.Note = peer.Addr.String() + " is inside the target networks but presents no token"
		case e.IsExcluded(local.Addr):
			h.Note = fmt.Sprintf("the peer sends no token: its enforcer lets %s (excluded networks) through unchecked", local.Addr)
		default:
			h.Note = fmt.Sprintf("the peer sends no token: its enforcer sees %s outside the target networks", local.Addr)
		}
		return h
	}
	h.Rule, h.Observed, h.Log = newRuleOut(d.Rule), newRuleOut(d.Observed), d.Log
	return h
}

func (f *flow) print(w io.Writer) {
	fmt.Fprintf(w, "flow      %s -> %s %s\n", f.From, f.To, f.Port)
	for _, n := range f.Notes {
		fmt.Fprintf(w, "note      %s\n", n)
	}
	for _, h := range []struct {
		title string
		h     *half
	}{{"server ingress", &f.Ingress}, {"client egress", &f.Egress}} {
		fmt.Fprintf(w, "%s:\n", h.title)
		if h.h.Applies {
			fmt.Fprintf(w, "  policies  %s\n", strings.Join(h.h.Policies, ", "))
		}
		v := h.h.Verdict
		if h.h.Reason != "" {
			v += " (" + h.h.Reason + ")"
		}
		fmt.Fprintf(w, "  verdict   %s\n", v)
		if h.h.Note != "" {
			fmt.Fprintf(w, "  note      %s\n", h.h.Note)
		}
		if h.h.Applies && h.h.Note == "" {
			fmt.Fprintf(w, "  rule      %s\n", h.h.Rule)
			fmt.Fprintf(w, "  observed  %s\n", h.h.Observed)
			if h.h.Log {
				fmt.Fprintf(w, "  log       yes\n")
			}
		}
	}
	v := f.Verdict
	if f.DecidedBy != "" {
		v += " (" + f.DecidedBy
		if f.Reason != "" {
			v += ": " + f.Reason
		}
		v += ")"
	}
	fmt.Fprintf(w, "verdict   %s\n", v)
}
