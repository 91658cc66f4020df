package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// gen draws random policies, tags, addresses and ports from small universes,
// so that selectors, prefixes and ports collide often.
type gen struct{ r *rand.Rand }

var (
	genKeys = []string{"app", "env", "tier", "team", "@sys:name", "@ns:kubernetes.io/metadata.name"}
	// Label values, and values only a trireme selector can hold (images,
	// names, container IDs, quotes, separators, non-ASCII, empty).
	genValues = []string{"a", "b", "c", "nginx:1.25", "/web-1", strings.Repeat("0f", 32), `say "hi", (x)=!y \z`, "é", ""}
	genCIDRs  = []string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.1.2.128/25",
		"192.168.0.0/16", "::/0", "fd00::/8", "fd00:1::/32", "fd00:1::/64", "fd00:1::1/128"}
	genPorts = []string{"tcp/80", "tcp/80-90", "tcp/85", "udp/53", "tcp", "udp", "icmp", "sctp/1-100", "tcp/1-65535"}
)

func (g gen) pick(s []string) string { return s[g.r.Intn(len(s))] }

func (g gen) values() []string {
	n := 1 + g.r.Intn(2)
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, g.pick(genValues))
	}
	return out
}

// write writes a value for the string form: bare when it can be, or in
// double quotes.
func (g gen) write(v string) string {
	bare := v != "" && !strings.ContainsAny(v, " \t\r\n\"=!(),<>")
	if bare && g.r.Intn(2) == 0 {
		return v
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
}

func (g gen) writeAll(vs []string) string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = g.write(v)
	}
	return strings.Join(out, ", ")
}

func (g gen) selector() *Selector {
	if g.r.Intn(12) == 0 {
		s, _ := ParseSelector("*")
		return s
	}
	n := 1 + g.r.Intn(3)
	if g.r.Intn(3) == 0 { // structured form
		var reqs []Requirement
		for i := 0; i < n; i++ {
			r := Requirement{Key: g.pick(genKeys), Op: Operator(g.r.Intn(4))}
			if r.Op == OpIn || r.Op == OpNotIn {
				r.Values = g.values()
			}
			reqs = append(reqs, r)
		}
		s, err := newStructuredSelector(reqs)
		if err != nil {
			panic(err)
		}
		return s
	}
	var terms []string
	for i := 0; i < n; i++ {
		k := g.pick(genKeys)
		switch g.r.Intn(7) {
		case 0:
			terms = append(terms, k+"="+g.write(g.pick(genValues)))
		case 1:
			terms = append(terms, k+" == "+g.write(g.pick(genValues)))
		case 2:
			terms = append(terms, k+"!="+g.write(g.pick(genValues)))
		case 3:
			terms = append(terms, k+" in ("+g.writeAll(g.values())+")")
		case 4:
			terms = append(terms, k+" notin ( "+g.writeAll(g.values())+" )")
		case 5:
			terms = append(terms, k)
		case 6:
			terms = append(terms, "!"+k)
		}
	}
	s, err := ParseSelector(strings.Join(terms, ", "))
	if err != nil {
		panic(err)
	}
	return s
}

func (g gen) subprefix(p netip.Prefix) netip.Prefix {
	a := g.addrIn(p)
	bits := p.Bits() + g.r.Intn(a.BitLen()-p.Bits()+1)
	return netip.PrefixFrom(a, bits).Masked()
}

// addrIn returns a random address inside p.
func (g gen) addrIn(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		if g.r.Intn(2) == 0 {
			b[i/8] |= 0x80 >> (i % 8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (g gen) rule(i int) Rule {
	r := Rule{Index: i, Action: Allow}
	if g.r.Intn(3) == 0 {
		r.Action = Reject
	}
	switch g.r.Intn(5) {
	case 0:
		r.Observe = ObserveContinue
	case 1:
		r.Observe = ObserveApply
	}
	r.Log = g.r.Intn(4) == 0
	if g.r.Intn(4) == 0 {
		r.Name = fmt.Sprintf("r%d", i)
	}
	for n := g.r.Intn(4); n > 0; n-- {
		if g.r.Intn(2) == 0 {
			r.Peers = append(r.Peers, Peer{Selector: g.selector()})
			continue
		}
		c := netip.MustParsePrefix(g.pick(genCIDRs))
		if g.r.Intn(3) == 0 {
			c = g.subprefix(c)
		}
		pe := Peer{CIDR: c}
		for e := g.r.Intn(3); e > 0; e-- {
			pe.Except = append(pe.Except, g.subprefix(c))
		}
		r.Peers = append(r.Peers, pe)
	}
	for n := g.r.Intn(3); n > 0; n-- {
		pr, err := ParsePortRange(g.pick(genPorts))
		if err != nil {
			panic(err)
		}
		r.Ports = append(r.Ports, pr)
	}
	return r
}

func (g gen) set() *Set {
	s := &Set{}
	for i, n := 0, 1+g.r.Intn(8); i < n; i++ {
		p := Policy{Name: fmt.Sprintf("p%d", i), Selector: g.selector()}
		for j, m := 0, g.r.Intn(5); j < m; j++ {
			p.Ingress = append(p.Ingress, g.rule(j))
		}
		for j, m := 0, g.r.Intn(5); j < m; j++ {
			p.Egress = append(p.Egress, g.rule(j))
		}
		s.Policies = append(s.Policies, p)
	}
	return s
}

func (g gen) tags() identity.Tags {
	m := map[string]string{}
	for _, k := range genKeys {
		if g.r.Intn(2) == 0 {
			m[k] = g.pick(genValues)
		}
	}
	return identity.NewTags(m)
}

func (g gen) addr() netip.Addr {
	switch g.r.Intn(8) {
	case 0:
		return netip.Addr{}
	case 1:
		return netip.AddrFrom4([4]byte{byte(g.r.Intn(256)), byte(g.r.Intn(256)), byte(g.r.Intn(256)), byte(g.r.Intn(256))})
	case 2: // IPv4-mapped IPv6: must behave as the IPv4 address
		return netip.AddrFrom16(g.addrIn(netip.MustParsePrefix("10.1.2.0/24")).As16())
	}
	return g.addrIn(netip.MustParsePrefix(g.pick(genCIDRs)))
}

func (g gen) port() (ipproto.Proto, uint16) {
	protos := []ipproto.Proto{ipproto.TCP, ipproto.UDP, ipproto.ICMP, ipproto.SCTP, ipproto.ICMPv6}
	ports := []uint16{0, 1, 22, 53, 79, 80, 85, 90, 91, 100, 101, 443, 65535}
	return protos[g.r.Intn(len(protos))], ports[g.r.Intn(len(ports))]
}

// TestPropertyEngineMatchesNaive: the compiled engine and the naive evaluator
// of the documented semantics agree on every decision.
func TestPropertyEngineMatchesNaive(t *testing.T) {
	g := gen{rand.New(rand.NewSource(20261123))}
	t.Cleanup(func() { portFirstMax, portFirstProbe = 32, 8 })
	const sets, pus, decisions = 400, 4, 40
	compared, checked, allowed, rejected, observed := 0, 0, 0, 0, 0
	wide := map[bool]int{} // policy selectors with values apimachinery cannot hold, and the others
	for si := 0; si < sets; si++ {
		s := g.set()
		for _, pol := range s.Policies {
			wide[k8sSelector(pol.Selector) == nil]++
		}
		e, err := Compile(s)
		if err != nil {
			t.Fatal(err)
		}
		// The same set written as YAML and parsed back must decide the same:
		// this holds the parser to the model.
		text := g.format(s)
		s2, err := Parse("gen.yaml", []byte(text))
		if err != nil {
			t.Fatalf("generated file does not parse: %v\n%s", err, text)
		}
		e2, err := Compile(s2)
		if err != nil {
			t.Fatal(err)
		}
		n := naive{s}
		for pi := 0; pi < pus; pi++ {
			local := g.tags()
			pp, pp2 := e.ForPU(local), e2.ForPU(local)
			for di := 0; di < decisions; di++ {
				peerTags := g.tags()
				var id *identity.Identity
				hasPeer := g.r.Intn(3) != 0
				if hasPeer {
					id = identity.New(peerTags)
				}
				addr := g.addr()
				proto, port := g.port()
				for _, dir := range []Direction{Ingress, Egress} {
					want := n.decide(local, dir, peerTags, hasPeer, addr, proto, port)
					var got Decision
					// Both decision plans, the automatic choice, and the
					// engine of the parsed YAML.
					for plan, knobs := range [][2]int{{-1, 0}, {1 << 30, 0}, {-1, 2}, {32, 8}, {32, 8}} {
						portFirstMax, portFirstProbe = knobs[0], knobs[1]
						p := pp
						if plan == 4 {
							p = pp2
						}
						if dir == Ingress {
							got = p.Ingress(id, addr, proto, port)
						} else {
							got = p.Egress(id, addr, proto, port)
						}
						compared++
						if got.Action != want.action || got.Reason != want.reason || got.Log != want.log ||
							!sameRef(got.Rule, want.rule) || !sameRef(got.Observed, want.observed) {
							t.Fatalf("set %d plan %d: disagreement for local %v %s peer %v (identity %v) addr %v %v/%d:\nengine %+v rule %+v observed %+v\nnaive  %+v rule %+v observed %+v",
								si, plan, local, dir, peerTags, hasPeer, addr, proto, port, got, got.Rule, got.Observed, want, want.rule, want.observed)
						}
					}
					checked++
					switch got.Action {
					case Allow:
						allowed++
					case Reject:
						rejected++
					}
					if got.Observed != nil {
						observed++
					}
				}
			}
		}
	}
	t.Logf("%d decisions, %d comparisons (peer-first, port-first, hybrid, automatic, parsed YAML) agree: %d allow, %d reject, %d with an observed rule",
		checked, compared, allowed, rejected, observed)
	if wide[true] < sets/4 || wide[false] < sets/4 {
		t.Fatalf("generator: %d selectors with wide values, %d without", wide[true], wide[false])
	}
	// The generator must exercise every outcome, or the comparison proves little.
	if allowed < checked/20 || rejected < checked/50 || observed < checked/50 || allowed+rejected > checked*19/20 {
		t.Fatalf("unbalanced generator: %d allow, %d reject, %d observed of %d", allowed, rejected, observed, checked)
	}
}

// format writes a Set as a policy file, choosing randomly between the
// string and the structured selector forms.
func (g gen) format(s *Set) string {
	var b strings.Builder
	b.WriteString("policies:\n")
	for _, p := range s.Policies {
		fmt.Fprintf(&b, "  - name: %q\n    selector: %s\n", p.Name, g.selectorYAML(p.Selector))
		for d, rules := range [2][]Rule{p.Ingress, p.Egress} {
			if len(rules) == 0 {
				continue
			}
			peersKey := "from"
			if d == 1 {
				peersKey = "to"
			}
			fmt.Fprintf(&b, "    %s:\n", Direction(d))
			for _, r := range rules {
				fmt.Fprintf(&b, "      - action: %s\n", r.Action)
				if r.Name != "" {
					fmt.Fprintf(&b, "        name: %q\n", r.Name)
				}
				if r.Log {
					b.WriteString("        log: true\n")
				}
				if r.Observe != Enforce {
					fmt.Fprintf(&b, "        observe: %s\n", r.Observe)
				}
				if len(r.Ports) > 0 {
					var ports []string
					for _, pr := range r.Ports {
						ports = append(ports, strconv.Quote(pr.String()))
					}
					fmt.Fprintf(&b, "        ports: [%s]\n", strings.Join(ports, ", "))
				}
				if len(r.Peers) > 0 {
					fmt.Fprintf(&b, "        %s:\n", peersKey)
					for _, pe := range r.Peers {
						if pe.Selector != nil {
							fmt.Fprintf(&b, "          - selector: %s\n", g.selectorYAML(pe.Selector))
							continue
						}
						fmt.Fprintf(&b, "          - cidr: %q\n", pe.CIDR)
						if len(pe.Except) > 0 {
							var ex []string
							for _, e := range pe.Except {
								ex = append(ex, strconv.Quote(e.String()))
							}
							fmt.Fprintf(&b, "            except: [%s]\n", strings.Join(ex, ", "))
						}
					}
				}
			}
		}
	}
	return b.String()
}

func (g gen) selectorYAML(s *Selector) string {
	reqs := s.Requirements()
	if len(reqs) == 0 || g.r.Intn(2) == 0 {
		return strconv.Quote(requirementsText(reqs)) // "*" when empty
	}
	var exprs []string
	for _, r := range reqs {
		e := fmt.Sprintf("{key: %q, operator: %s", r.Key, r.Op)
		if len(r.Values) > 0 {
			var vs []string
			for _, v := range r.Values {
				vs = append(vs, strconv.Quote(v))
			}
			e += ", values: [" + strings.Join(vs, ", ") + "]"
		}
		exprs = append(exprs, e+"}")
	}
	return "{matchExpressions: [" + strings.Join(exprs, ", ") + "]}"
}
