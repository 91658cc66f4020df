package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"
)

// FuzzParse: no input may panic the parser or the compiler; an accepted
// file compiles and decides; a rejected one yields no Set and positioned
// errors.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../examples/policy.yaml")
	if err != nil {
		f.Fatal(err)
	}
	seeds := []string{
		string(example),
		strings.Replace(string(example), "tcp/5432", "tcp/99999", 1),
		strings.Replace(string(example), "10.0.0.0/16", "10.0.0.0/99", 1),
		strings.Replace(string(example), "action: allow", "action: deny", 1),
		strings.Replace(string(example), "selector: app=web", "selector: app in (web", 1),
		strings.Replace(string(example), "except: [203.0.113.66/32]", "except: [198.51.100.0/24]", 1),
		strings.Replace(string(example), "name: db", "name: web", 1),
		string(example[:len(example)/2]),
		"",
		"---\n---\n",
		"policies: [{name: a, selector: '*', ingress: [{action: allow}]}]",
		"policies:\n  - &a {name: a, selector: x}\n  - *a\n",
		"a: &a [*a, *a]\n",
		"policies: [{name: a, selector: {matchExpressions: [{key: '@sys:x', operator: NotIn, values: [a]}]}}]",
		"targetNetworks: ['::/0', 0.0.0.0/0]\nexcludedNetworks: [1.2.3.4]",
		"policies:\n- name: x\n  selector: '!a,b notin (c),d'\n  egress: [{to: [{cidr: 'fd00::/8', except: ['fd00::1']}], ports: [icmpv6, sctp/1-2], action: reject, observe: apply, log: true}]",
		"\t{]",
		"policies: !!binary aGVsbG8=",
		"? [a]\n: b\n",
		"policies: " + strings.Repeat("[", 12000),
		"policies:\n- name: a\n  selector: '*'\n  ingress:\n  - ports: [tcp/1-65535, udp, sctp, icmp]\n    action: allow\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			if s != nil {
				t.Fatal("error with a Set")
			}
			list, ok := err.(ErrorList)
			if !ok || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %v", err)
			}
			for _, e := range list {
				if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Column < 1 {
					t.Fatalf("unpositioned error: %v", e)
				}
			}
			return
		}
		e, err := Compile(s)
		if err != nil {
			t.Fatalf("a parsed Set does not compile: %v", err)
		}
		pu := e.ForPU(Tags{{"app", "web"}})
		peer := NewIdentity(Tags{{"app", "frontend"}})
		for _, a := range []string{"10.0.1.1", "fd00::1", "192.0.2.1"} {
			addr := netip.MustParseAddr(a)
			pu.Ingress(peer, addr, ProtoTCP, 80)
			pu.Egress(nil, addr, ProtoUDP, 53)
			e.IsTarget(addr)
			e.IsExcluded(addr)
		}
	})
}

// FuzzParseSelector: the string form never panics; what parses has a text
// that parses to the same requirements.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"app=web, env in (prod,staging), tier!=db, !legacy", "@sys:image=nginx", "@ns:kubernetes.io/metadata.name",
		"a notin (b,c)", "*", "", "@:x", "@a:", "x>1", "a,,b", "a in ()", "@sys:a/b/c=d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseSelector(text)
		if err != nil {
			return
		}
		again, err := ParseSelector(requirementsText(s.Requirements()))
		if err != nil {
			t.Fatalf("%q -> %q does not parse: %v", text, requirementsText(s.Requirements()), err)
		}
		if requirementsText(again.Requirements()) != requirementsText(s.Requirements()) {
			t.Fatalf("%q: %q != %q", text, requirementsText(again.Requirements()), requirementsText(s.Requirements()))
		}
	})
}
