package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"k8s.io/apimachinery/pkg/labels"
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
		"policies:\n- name: a\n  selector: '@sys:image=\"registry.local:5000/nginx:1.25\", @sys:name in (/web-1, \"a \\\\ b\")'\n  ingress: [{from: [{selector: '@sys:id notin (\"x\")'}], action: allow}]\n",
		"policies:\n- name: a\n  selector: {matchLabels: {'@sys:name': '/web-1'}, matchExpressions: [{key: x, operator: In, values: ['a \"b\"', '']}]}\n",
		"policies:\n- name: a\n  selector: 'app=x\"y'\n",
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
		pu := e.ForPU(identity.Tags{{Key: "app", Value: "web"}})
		peer := identity.New(identity.Tags{{Key: "app", Value: "frontend"}})
		for _, a := range []string{"10.0.1.1", "fd00::1", "192.0.2.1"} {
			addr := netip.MustParseAddr(a)
			pu.Ingress(peer, addr, ipproto.TCP, 80)
			pu.Egress(nil, addr, ipproto.UDP, 53)
			e.IsTarget(addr)
			e.IsExcluded(addr)
		}
	})
}

// FuzzParseSelector: the string form never panics; what parses has values
// within the value rule and a text that parses to the same requirements;
// whatever apimachinery accepts (keys encoded) parses to apimachinery's
// requirements; the scan of values never disagrees with apimachinery.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"app=web, env in (prod,staging), tier!=db, !legacy", "@sys:image=nginx", "@ns:kubernetes.io/metadata.name",
		"a notin (b,c)", "*", "", "@:x", "@a:", "x>1", "a,,b", "a in ()", "@sys:a/b/c=d",
		`@sys:image="registry.local:5000/team/nginx:1.25"`, "@sys:image=registry.local:5000/team/nginx:1.25", `@sys:name in (/web-1, "/web 2")`,
		`a notin ("x\"y", "\\", "")`, `a="x`, `"a"=b`, `a=b"c`, "x in (foo,,baz),y,z notin ()", `a in ("x" "y")`, "a=in", "a in (in,notin)",
		"@sys:id=" + strings.Repeat("ab", 32), "a=\"é\u00a0\"", "!a=b", "a==,b!=", `a>"1"`, "a=tq0q0z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseSelector(text)
		if err != nil && strings.Contains(err.Error(), "cannot tell the values") {
			t.Fatalf("%q: the value scan disagrees with apimachinery: %v", text, err)
		}
		if k8s, ok := apimachineryReqs(text); ok {
			if err != nil {
				t.Fatalf("%q: apimachinery accepts it (%s), ParseSelector does not: %v", text, k8s, err)
			}
			if got := requirementsText(s.Requirements()); got != k8s {
				t.Fatalf("%q: %s, apimachinery %s", text, got, k8s)
			}
		}
		if err != nil {
			return
		}
		for _, r := range s.Requirements() {
			for _, v := range r.Values {
				if checkValue(v) != nil {
					t.Fatalf("%q: accepted value %q: %v", text, v, checkValue(v))
				}
			}
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

// apimachineryReqs is what apimachinery alone makes of a selector (reserved
// keys encoded), when it accepts it and trireme supports every operator.
func apimachineryReqs(text string) (string, bool) {
	t := strings.TrimSpace(text)
	if t == "" || t == everything || strings.IndexByte(t, 0) >= 0 { // apimachinery stops at a NUL
		return "", false
	}
	enc, back, err := encodeKeysInText(t)
	if err != nil {
		return "", false
	}
	sel, err := labels.Parse(enc)
	if err != nil {
		return "", false
	}
	lreqs, _ := sel.Requirements()
	var reqs []Requirement
	for i := range lreqs {
		if _, ours := back[lreqs[i].Key()]; !ours && isReservedDomain(lreqs[i].Key()) {
			return "", false
		}
		r, err := fromLabelRequirement(&lreqs[i])
		if err != nil {
			return "", false
		}
		reqs = append(reqs, r)
	}
	return requirementsText(reqs), true
}
