package node

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
)

// FlowQuery selects flow records (`trireme flows`, GET /v1/flows). Filters
// of different kinds must all match; the values of one kind are
// alternatives (--verdict denied --verdict rejected: either).
type FlowQuery struct {
	// PU: the local PU's name or ID; PUSelector a selector over its tags.
	PU         []string
	PUSelector *policy.Selector
	// Peer: the remote end's address within one of these prefixes;
	// PeerSelector a selector over its verified tags (a peer without
	// tags, an external address, matches none).
	Peer         []netip.Prefix
	PeerSelector *policy.Selector
	// Port: the server's port in one of these ranges; Proto the protocol.
	Port  []policy.PortRange
	Proto []ipproto.Proto
	// Verdict: allowed, denied, rejected, none or observed.
	Verdict []string
	// Reason: the drop reason's name (docs/reasons.md).
	Reason []string
	// Rule: the deciding (or observed) rule, named as the policy's name,
	// the rule's name, or policy/direction/index ("web/ingress/0").
	Rule []string
	// Direction: ingress or egress (the local PU's view).
	Direction string
	// Since: records decided at or after this time; Last: only the newest
	// N records that match (0: all the ring holds).
	Since time.Time
	Last  int
	// After: records after this Seq (a follower resuming).
	After uint64
	// Follow keeps the answer open and streams new records as they come.
	Follow bool
}

// Limits of a query (its parameters are untrusted).
const (
	maxQueryValues   = 64  // values of one parameter
	maxQueryValueLen = 512 // bytes of one value
)

// Encode returns the query as URL parameters (ParseFlowQuery's input).
func (q *FlowQuery) Encode() url.Values {
	v := url.Values{}
	v["pu"] = q.PU
	if q.PUSelector != nil {
		v.Set("pu-selector", q.PUSelector.Text)
	}
	for _, p := range q.Peer {
		v.Add("peer", p.String())
	}
	if q.PeerSelector != nil {
		v.Set("peer-selector", q.PeerSelector.Text)
	}
	for _, p := range q.Port {
		v.Add("port", portText(p))
	}
	for _, p := range q.Proto {
		v.Add("proto", p.String())
	}
	v["verdict"], v["reason"], v["rule"] = q.Verdict, q.Reason, q.Rule
	if q.Direction != "" {
		v.Set("direction", q.Direction)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Last > 0 {
		v.Set("last", strconv.Itoa(q.Last))
	}
	if q.After > 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.Follow {
		v.Set("follow", "true")
	}
	for k, vs := range v {
		if len(vs) == 0 {
			delete(v, k)
		}
	}
	return v
}

// ParseFlowQuery reads a query from URL parameters, refusing unknown
// parameters and bad values with a message naming them. now resolves a
// relative since ("5m": the last five minutes).
func ParseFlowQuery(v url.Values, now time.Time) (*FlowQuery, error) {
	q := &FlowQuery{}
	for k, vs := range v {
		if len(vs) > maxQueryValues {
			return nil, fmt.Errorf("%s: at most %d values", k, maxQueryValues)
		}
		for _, s := range vs {
			if len(s) > maxQueryValueLen {
				return nil, fmt.Errorf("%s: a value longer than %d bytes", k, maxQueryValueLen)
			}
		}
		if err := q.set(k, vs, now); err != nil {
			return nil, err
		}
	}
	return q, nil
}

func (q *FlowQuery) set(k string, vs []string, now time.Time) error {
	bad := func(s, want string) error { return fmt.Errorf("%s: %q: want %s", k, s, want) }
	one := func() (string, error) {
		if len(vs) != 1 {
			return "", fmt.Errorf("%s: give it once", k)
		}
		return vs[0], nil
	}
	switch k {
	case "pu":
		q.PU = vs
	case "pu-selector", "peer-selector":
		s, err := one()
		if err != nil {
			return err
		}
		sel, err := policy.ParseSelector(s)
		if err != nil {
			return fmt.Errorf("%s: %v", k, err)
		}
		if k == "pu-selector" {
			q.PUSelector = sel
		} else {
			q.PeerSelector = sel
		}
	case "peer":
		for _, s := range vs {
			p, err := ParsePrefixOrAddr(s)
			if err != nil {
				return fmt.Errorf("peer: %v", err)
			}
			q.Peer = append(q.Peer, p)
		}
	case "port":
		for _, s := range vs {
			pr, err := parsePortFilter(s)
			if err != nil {
				return bad(s, "a port, a range (8000-8100) or proto/port (udp/53)")
			}
			q.Port = append(q.Port, pr)
		}
	case "proto":
		for _, s := range vs {
			var p ipproto.Proto
			if err := p.UnmarshalText([]byte(s)); err != nil {
				return bad(s, "tcp, udp, sctp, icmp, icmpv6 or ip-N")
			}
			q.Proto = append(q.Proto, p)
		}
	case "verdict":
		for _, s := range vs {
			switch s {
			case VerdictAllowed, VerdictDenied, VerdictRejected, VerdictNone, VerdictObserved:
			default:
				return bad(s, "allowed, denied, rejected, none or observed")
			}
		}
		q.Verdict = vs
	case "reason":
		for _, s := range vs {
			if _, ok := reason.Parse(s); !ok {
				return bad(s, "a drop reason (docs/reasons.md)")
			}
		}
		q.Reason = vs
	case "rule":
		q.Rule = vs
	case "direction":
		s, err := one()
		if err != nil {
			return err
		}
		if s != "ingress" && s != "egress" {
			return bad(s, "ingress or egress")
		}
		q.Direction = s
	case "since":
		s, err := one()
		if err != nil {
			return err
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			q.Since = t
		} else if d, err := time.ParseDuration(s); err == nil && d >= 0 {
			q.Since = now.Add(-d)
		} else {
			return bad(s, "an RFC 3339 time or a duration (5m)")
		}
	case "last":
		s, err := one()
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return bad(s, "a number of records")
		}
		q.Last = n
	case "after":
		s, err := one()
		if err != nil {
			return err
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return bad(s, "a record sequence number")
		}
		q.After = n
	case "follow":
		s, err := one()
		if err != nil {
			return err
		}
		b, err := strconv.ParseBool(s)
		if err != nil {
			return bad(s, "true or false")
		}
		q.Follow = b
	default:
		return fmt.Errorf("unknown parameter %q", k)
	}
	return nil
}

// Match reports whether f passes the query's filters (not Last, which
// depends on the other records).
func (q *FlowQuery) Match(f *Flow) bool {
	if f.Seq <= q.After {
		return false
	}
	if !q.Since.IsZero() && f.Time.Before(q.Since) {
		return false
	}
	if len(q.PU) > 0 && !slices.ContainsFunc(q.PU, func(s string) bool { return s == f.Local.ID || s != "" && s == f.LocalName }) {
		return false
	}
	if q.PUSelector != nil && !selects(q.PUSelector, f.Local.Tags) {
		return false
	}
	if len(q.Peer) > 0 && !slices.ContainsFunc(q.Peer, func(p netip.Prefix) bool { return p.Contains(f.Remote.IP.Unmap()) || p.Contains(f.Remote.IP) }) {
		return false
	}
	if q.PeerSelector != nil && (len(f.Remote.Tags) == 0 || !selects(q.PeerSelector, f.Remote.Tags)) {
		return false
	}
	if len(q.Proto) > 0 && !slices.Contains(q.Proto, f.Proto) {
		return false
	}
	if len(q.Port) > 0 && !slices.ContainsFunc(q.Port, func(pr policy.PortRange) bool { return pr.Matches(f.Proto, f.Server.Port()) }) {
		return false
	}
	if len(q.Verdict) > 0 && !slices.ContainsFunc(q.Verdict, func(v string) bool {
		return v == f.Verdict || v == VerdictObserved && f.Observed != nil
	}) {
		return false
	}
	if len(q.Reason) > 0 && !slices.Contains(q.Reason, f.Reason) {
		return false
	}
	if len(q.Rule) > 0 && !slices.ContainsFunc(q.Rule, func(s string) bool { return ruleIs(f.Rule, s) || ruleIs(f.Observed, s) }) {
		return false
	}
	if q.Direction != "" && q.Direction != f.Direction {
		return false
	}
	return true
}

// ruleIs reports whether r is the rule named s: its policy's name, its own
// name, or policy/direction/index.
func ruleIs(r *dataplane.RuleInfo, s string) bool {
	if r == nil || s == "" {
		return false
	}
	return s == r.Policy || s == r.Name || s == r.Policy+"/"+r.Direction+"/"+strconv.Itoa(r.Index)
}

// selects reports whether a selector matches tags given as "key=value"
// (as records carry them).
func selects(sel *policy.Selector, kvs []string) bool {
	tags := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		tags[k] = v
	}
	for _, r := range sel.Requirements() {
		v, ok := tags[r.Key]
		switch r.Op {
		case policy.OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case policy.OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case policy.OpExists:
			if !ok {
				return false
			}
		case policy.OpDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// parsePortFilter reads "8080", "8000-8100" (any protocol with ports) or
// the policy's form ("tcp/8080", "udp/53-54").
func parsePortFilter(s string) (policy.PortRange, error) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return policy.ParsePortRange(s)
	}
	pr, err := policy.ParsePortRange("tcp/" + s)
	pr.Protocol = ipproto.Any
	return pr, err
}

// portText is parsePortFilter's input for pr.
func portText(pr policy.PortRange) string {
	if pr.Protocol != ipproto.Any {
		return pr.String()
	}
	if pr.First == pr.Last {
		return strconv.Itoa(int(pr.First))
	}
	return strconv.Itoa(int(pr.First)) + "-" + strconv.Itoa(int(pr.Last))
}
