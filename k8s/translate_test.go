package k8s

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/policy"
)

// universe is the base of the corner-case tests: namespaces x (team=a) and y
// (team=b), pods with labels and named ports. x/web serves "http" on 8080,
// y/web serves "http" on 9090 (same name, different numbers), x/dns serves
// "dns" on UDP 53 only.
const universe = `
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {team: b}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: x, labels: {app: web}}
  spec:
    containers:
    - name: c
      ports:
      - {name: http, containerPort: 8080}
      - {name: metrics, containerPort: 9100, protocol: TCP}
  status: {podIP: 10.0.1.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: x, labels: {app: db, team: b}}
  spec: {containers: [{name: c, ports: [{name: sql, containerPort: 5432}]}]}
  status: {podIP: 10.0.1.2}
- apiVersion: v1
  kind: Pod
  metadata: {name: dns, namespace: x, labels: {app: dns}}
  spec: {containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
  status: {podIP: 10.0.1.3}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: "y", labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
  status: {podIP: 10.0.2.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: "y", labels: {app: client}}
  spec: {containers: [{name: c}]}
  status: {podIP: 10.0.2.2}
`

// check is one expected decision: from and to are pod IDs, or "ext:ADDR" for
// a peer outside the cluster (no identity, decided by address).
type check struct {
	from, to string
	port     string // tcp/80, udp/53, sctp/80
	ingress  bool   // the server's ingress allows (to is a pod)
	egress   bool   // the client's egress allows (from is a pod)
}

func TestTranslateCorners(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		checks   []check
	}{
		{"no policy: everything allowed", ``, []check{
			{"x/web", "y/web", "tcp/80", true, true},
			{"ext:8.8.8.8", "x/db", "udp/1", true, true},
			{"x/db", "ext:8.8.8.8", "sctp/9", true, true},
			{"x/web", "x/web", "tcp/8080", true, true},
		}},
		{"default deny ingress isolates only ingress, only in its namespace", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
`, []check{
			{"y/web", "x/web", "tcp/8080", false, true},
			{"x/web", "x/web", "tcp/8080", false, true}, // self traffic follows the policy
			{"x/web", "y/web", "tcp/9090", true, true},
			{"ext:1.2.3.4", "x/db", "tcp/5432", false, true},
		}},
		{"policyTypes Egress only: ingress rules ignored, ingress not isolated", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
`, []check{
			{"y/client", "x/web", "tcp/8080", true, true},
			{"x/web", "y/web", "tcp/9090", true, false},
			{"x/db", "x/web", "tcp/8080", true, true},
		}},
		{"policyTypes absent and egress rules present: both directions isolated", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
`, []check{
			{"y/client", "x/web", "tcp/8080", false, true},
			{"x/web", "x/db", "tcp/5432", true, true},
			{"x/web", "x/dns", "udp/53", true, false},
		}},
		{"policyTypes absent and no egress rules: egress not isolated", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
`, []check{
			{"x/web", "ext:9.9.9.9", "tcp/443", true, true},
			{"x/db", "x/web", "tcp/8080", true, true},
			{"x/dns", "x/web", "tcp/8080", false, true},
		}},
		{"rule without from allows every source, external included", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 8080}]}, {from: []}]
`, []check{
			{"ext:1.2.3.4", "x/web", "udp/7", true, true}, // the second rule: every peer, every port
			{"y/client", "x/web", "tcp/1", true, true},
		}},
		{"egress with no rules denies all; ingress untouched", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
`, []check{
			{"x/web", "x/db", "tcp/5432", true, false},
			{"x/web", "x/web", "tcp/8080", true, false},
			{"x/db", "x/web", "tcp/8080", true, true},
		}},
		{"podSelector peer: same namespace only", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
`, []check{
			{"y/web", "y/client", "tcp/1", true, true},
			{"x/web", "y/client", "tcp/1", false, true}, // same labels, other namespace
		}},
		{"empty namespaceSelector: every pod, no outsider", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]
`, []check{
			{"x/db", "y/web", "tcp/9090", true, true},
			{"y/client", "y/web", "tcp/9090", true, true},
			{"ext:10.0.9.9", "y/web", "tcp/9090", false, true},
			{"tags:app=web", "y/web", "tcp/9090", false, true}, // an identity that is not a pod
		}},
		{"namespace labels are not pod labels", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]
`, []check{
			{"x/db", "y/web", "tcp/9090", false, true}, // pod label team=b in namespace team=a
			{"y/client", "y/web", "tcp/9090", true, true},
			{"tags:@ns:team=b", "y/web", "tcp/9090", false, true}, // not a pod: no @sys:namespace
		}},
		{"namespaceSelector and podSelector in one peer: AND; in two peers: OR", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: web}}}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {app: dns}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: web}}}]
`, []check{
			{"y/web", "x/db", "tcp/5432", true, true},
			{"y/client", "x/db", "tcp/5432", false, true},
			{"x/web", "x/db", "tcp/5432", false, true},
			{"y/client", "x/dns", "udp/53", true, true},
			{"x/web", "x/dns", "udp/53", true, true},
			{"x/db", "x/dns", "udp/53", false, true},
		}},
		{"automatic kubernetes.io/metadata.name label and matchExpressions", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [dns]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: ["y"]}]}
      podSelector: {matchExpressions: [{key: app, operator: Exists}, {key: tier, operator: DoesNotExist}]}
`, []check{
			{"y/client", "x/web", "tcp/8080", true, true},
			{"x/web", "x/db", "tcp/5432", false, true},
			{"x/web", "x/dns", "udp/53", true, true}, // dns not selected: not isolated
		}},
		{"ipBlock with except matches pods and outsiders by address", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/31]}}]}]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
`, []check{
			{"x/web", "x/db", "tcp/5432", true, true},
			{"y/web", "x/db", "tcp/5432", false, true},   // 10.0.2.1 excepted
			{"y/client", "x/db", "tcp/5432", true, true}, // 10.0.2.2 not excepted
			{"ext:10.0.200.1", "x/db", "tcp/5432", true, true},
			{"ext:10.1.0.1", "x/db", "tcp/5432", false, true},
			{"x/db", "ext:8.8.8.8", "udp/53", true, true},
			{"x/db", "x/web", "tcp/8080", true, false},
		}},
		{"ports: {} is every TCP port only; protocols; endPort inclusive", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{}]
  - from: [{podSelector: {}}]
    ports: [{protocol: UDP, port: 1000, endPort: 1010}, {protocol: SCTP}]
`, []check{
			{"y/client", "x/web", "tcp/1", true, true},
			{"y/client", "x/web", "tcp/65535", true, true},
			{"y/client", "x/web", "udp/8080", false, true},
			{"y/client", "x/web", "sctp/8080", false, true},
			{"x/db", "x/web", "udp/999", false, true},
			{"x/db", "x/web", "udp/1000", true, true},
			{"x/db", "x/web", "udp/1010", true, true},
			{"x/db", "x/web", "udp/1011", false, true},
			{"x/db", "x/web", "tcp/1000", false, true},
			{"x/db", "x/web", "sctp/7", true, true},
		}},
		{"ingress named port resolves per selected pod", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}, {port: sql, protocol: UDP}]}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
`, []check{
			{"y/client", "x/web", "tcp/8080", true, true},
			{"y/client", "x/web", "tcp/9090", false, true},
			{"y/client", "x/web", "udp/8080", false, true},
			{"x/web", "y/web", "tcp/9090", true, true},
			{"x/web", "y/web", "tcp/8080", false, true},
			{"x/web", "x/dns", "udp/53", true, true},
			{"x/web", "x/dns", "tcp/53", false, true},
			{"x/web", "x/db", "tcp/5432", false, true}, // sql is TCP: UDP named port matches nothing
			{"x/web", "x/db", "udp/5432", false, true},
			{"x/web", "y/client", "tcp/8080", false, true}, // client has no http port
		}},
		{"egress named port resolves per destination pod", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}, {ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: http}, {port: 5432}]
`, []check{
			{"y/client", "x/web", "tcp/8080", true, true},
			{"y/client", "x/web", "tcp/9090", true, false},
			{"y/client", "y/web", "tcp/9090", true, true},
			{"y/client", "y/web", "tcp/8080", true, false},
			{"y/client", "x/db", "tcp/5432", true, true}, // numeric part
			{"y/client", "ext:1.1.1.1", "tcp/5432", true, true},
			{"y/client", "ext:1.1.1.1", "tcp/8080", true, false}, // no named port outside
			{"y/client", "x/dns", "udp/53", true, false},
		}},
		{"policies are additive", `
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: one, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: two, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 6000}]}]
`, []check{
			{"x/web", "x/db", "tcp/5432", true, true},
			{"x/web", "x/db", "tcp/6000", false, true},
			{"y/client", "x/db", "tcp/6000", true, true},
			{"y/client", "x/db", "tcp/5432", false, true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Cluster{}
			if err := c.Decode("universe.yaml", []byte(universe)); err != nil {
				t.Fatal(err)
			}
			if err := c.Decode("policies.yaml", []byte(tc.policies)); err != nil {
				t.Fatal(err)
			}
			tr, err := Translate(c, Options{})
			if err != nil {
				t.Fatal(err)
			}
			engines := map[string]*policy.Engine{"translated": mustCompile(t, tr.Set)}
			text, err := MarshalSet(tr.Set)
			if err != nil {
				t.Fatal(err)
			}
			set2, err := policy.Parse("printed.yaml", text)
			if err != nil {
				t.Fatalf("printed policy does not parse: %v\n%s", err, text)
			}
			engines["printed"] = mustCompile(t, set2)
			for name, e := range engines {
				for _, ck := range tc.checks {
					in, eg := decide(t, tr, e, ck)
					if in != ck.ingress || eg != ck.egress {
						t.Errorf("%s policy: %s -> %s %s: ingress %v egress %v, want %v %v\n%s", name, ck.from, ck.to, ck.port, in, eg, ck.ingress, ck.egress, text)
					}
				}
			}
		})
	}
}

func mustCompile(t *testing.T, s *policy.Set) *policy.Engine {
	t.Helper()
	e, err := policy.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// endpoint resolves a check's end: a pod (tags and address), "ext:ADDR"
// (no identity) or "tags:k=v,..." (an identity that is no pod, address
// 10.0.9.9).
func endpoint(t *testing.T, tr *Translation, s string) (*identity.Identity, identity.Tags, netip.Addr, bool) {
	t.Helper()
	if a, ok := strings.CutPrefix(s, "ext:"); ok {
		return nil, nil, netip.MustParseAddr(a), false
	}
	if kv, ok := strings.CutPrefix(s, "tags:"); ok {
		tags, err := identity.ParseTags(strings.Split(kv, ","))
		if err != nil {
			t.Fatal(err)
		}
		return identity.New(tags), tags, netip.MustParseAddr("10.0.9.9"), false
	}
	pu := tr.PU(s)
	if pu == nil {
		t.Fatalf("no pod %s", s)
	}
	return identity.New(pu.Tags), pu.Tags, pu.IP(), true
}

// decide returns the server's ingress and the client's egress decisions;
// the half of an end that is not a pod is reported as allowed.
func decide(t *testing.T, tr *Translation, e *policy.Engine, ck check) (bool, bool) {
	t.Helper()
	pr, err := policy.ParsePortRange(ck.port)
	if err != nil {
		t.Fatal(err)
	}
	fromID, fromTags, fromIP, fromPod := endpoint(t, tr, ck.from)
	toID, toTags, toIP, toPod := endpoint(t, tr, ck.to)
	in, eg := true, true
	if toPod {
		in = e.ForPU(toTags).Ingress(fromID, fromIP, pr.Protocol, pr.First).Allowed()
	}
	if fromPod {
		eg = e.ForPU(fromTags).Egress(toID, toIP, pr.Protocol, pr.First).Allowed()
	}
	return in, eg
}

func TestPodTags(t *testing.T) {
	c := &Cluster{}
	if err := c.Decode("u.yaml", []byte(universe)); err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := tr.PU("x/db").Tags.String()
	want := "@ns:kubernetes.io/metadata.name=x,@ns:team=a,@sys:name=db,@sys:namespace=x,app=db,team=b"
	if got != want {
		t.Errorf("tags of x/db:\n got %s\nwant %s", got, want)
	}
	var ids []string
	for _, pu := range tr.PUs {
		ids = append(ids, fmt.Sprintf("%s@%s", pu.ID(), pu.IP()))
	}
	if got, want := strings.Join(ids, " "), "x/db@10.0.1.2 x/dns@10.0.1.3 x/web@10.0.1.1 y/client@10.0.2.2 y/web@10.0.2.1"; got != want {
		t.Errorf("PUs: got %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(tr.Set.TargetNetworks), "[10.0.1.2/32 10.0.1.3/32 10.0.1.1/32 10.0.2.2/32 10.0.2.1/32]"; got != want {
		t.Errorf("target networks: got %s, want %s", got, want)
	}
}

// A namespace label cannot be forged by a pod: pods cannot carry '@' keys.
func TestReservedLabelsRejected(t *testing.T) {
	c := &Cluster{}
	evil := Pod{Namespace: "x", Name: "evil", Labels: map[string]string{"@ns:team": "b"}}
	err := c.AddPod(evil)
	if err == nil || !strings.Contains(err.Error(), "label key") {
		t.Fatalf("AddPod: got %v, want a label key error", err)
	}
	c.Pods = append(c.Pods, evil) // bypassing AddPod
	if _, err := Translate(c, Options{}); err == nil || !strings.Contains(err.Error(), `pod x/evil: label key "@ns:team"`) {
		t.Fatalf("Translate: got %v, want a label key error", err)
	}
}

func TestTranslateErrors(t *testing.T) {
	head := "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n"
	tests := []struct {
		name, doc, want string
	}{
		{"bad cidr", head + "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]", "spec.ingress[0]: from[0].ipBlock.cidr"},
		{"except outside", head + "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]", "from[0].ipBlock.except[0]: 10.1.0.0/24 is not a strict subset"},
		{"ipBlock and selector", head + "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]", "spec.egress[0]: to[0]: ipBlock cannot be combined"},
		{"empty peer", head + "  ingress: [{from: [{}]}]", "from[0]: must specify podSelector, namespaceSelector or ipBlock"},
		{"endPort below port", head + "  ingress: [{ports: [{port: 90, endPort: 80}]}]", "ports[0].endPort: 80: must be between port (90)"},
		{"endPort with named port", head + "  ingress: [{ports: [{port: http, endPort: 80}]}]", "ports[0].endPort: may not be specified with a named port"},
		{"endPort without port", head + "  ingress: [{ports: [{endPort: 80}]}]", "ports[0].endPort: may not be specified without port"},
		{"port out of range", head + "  ingress: [{ports: [{port: 70000}]}]", "ports[0].port: 70000: out of range"},
		{"numeric string port", head + "  ingress: [{ports: [{port: \"80\"}]}]", `ports[0].port: "80"`},
		{"bad protocol", head + "  ingress: [{ports: [{protocol: ICMP}]}]", `ports[0].protocol: protocol "ICMP": want TCP, UDP or SCTP`},
		{"bad policyType", head + "  policyTypes: [Both]", `spec.policyTypes[0]: "Both"`},
		{"bad selector operator", "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Gt, values: [\"1\"]}]}", `spec.podSelector: "Gt" is not a valid label selector operator`},
		{"In without values", head + "  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]", "from[0].namespaceSelector: values: Invalid value"},
		{"bad label value", head + "  ingress: [{from: [{podSelector: {matchLabels: {a: \"b c\"}}}]}]", "from[0].podSelector: values[0][a]"},
		{"unknown field", head + "  ingres: []", `unknown field "ingres"`},
		{"unknown kind", "kind: Service\napiVersion: v1\nmetadata: {name: s}", `unsupported kind "Service"`},
		{"wrong version", "kind: NetworkPolicy\napiVersion: extensions/v1beta1\nmetadata: {name: s}", `apiVersion "extensions/v1beta1": want "networking.k8s.io/v1"`},
		{"no kind", "metadata: {name: s}", "object has no kind"},
		{"not an object", "- a\n- b", "not an object"},
		{"bad yaml", "kind: Pod\n  bad: [", "f.yaml:"},
		{"duplicate", head + "---\n" + head, "networkpolicy x/p defined twice"},
		{"bad pod ip", "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nstatus: {podIP: 1.2.3}", `status.podIP "1.2.3"`},
		{"bad pod name", "kind: Pod\napiVersion: v1\nmetadata: {name: A_b}", "pod default/A_b"},
		{"bad namespace name", "kind: Namespace\napiVersion: v1\nmetadata: {name: x.y}", `namespace "x.y"`},
		{"bad container port", "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}", "containerPort 0: out of range"},
		{"bad port name", "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{name: Http_1, containerPort: 80}]}]}", `port name "Http_1"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Cluster{}
			err := c.Decode("f.yaml", []byte(tc.doc))
			if err == nil {
				_, err = Translate(c, Options{})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "f.yaml:") {
				t.Errorf("error %q does not start with the file name", err)
			}
		})
	}
}

// Line numbers point into the multi-document file.
func TestDecodeErrorLines(t *testing.T) {
	doc := "kind: Namespace\napiVersion: v1\nmetadata: {name: x}\n---\n# a comment\nkind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}\n---\nkind: Pod\napiVersion: v1\nmetadata:\n  name: b\n   bad: 1\n"
	err := (&Cluster{}).Decode("m.yaml", []byte(doc))
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "m.yaml:5: ") || !strings.HasPrefix(lines[1], "m.yaml:15: ") {
		t.Fatalf("got %q, want errors at m.yaml:5 and m.yaml:15", lines)
	}
}

// The example in examples/k8s does what its comments say.
func TestExample(t *testing.T) {
	dir := filepath.Join("..", "examples", "k8s")
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := mustCompile(t, tr.Set)
	const (
		dns  = "kube-system/coredns-6f6b6"
		prom = "monitoring/prometheus-0"
		gw   = "payments/gateway-66f4c"
		api  = "shop/api-5c6b7"
		fe   = "shop/frontend-7d9f8"
		db   = "shop/postgres-0"
		web  = "ext:203.0.113.9"
	)
	checks := []check{
		{web, fe, "tcp/8080", true, true},
		{web, fe, "tcp/9090", false, true},
		{web, api, "tcp/8080", false, true},
		{fe, api, "tcp/8080", true, true},
		{fe, db, "tcp/5432", false, false},
		{fe, web, "tcp/443", true, false},
		{api, db, "tcp/5432", true, true},
		{api, gw, "tcp/8443", true, true},
		{api, gw, "tcp/9090", false, false},
		{gw, api, "tcp/8080", false, true},
		{prom, api, "tcp/9090", true, true},
		{prom, db, "tcp/9187", true, true},
		{prom, db, "tcp/9090", false, true},
		{prom, fe, "tcp/9090", false, true}, // the frontend names no metrics port
		{prom, gw, "tcp/9090", true, true},
		{api, dns, "udp/53", true, true},
		{db, dns, "tcp/53", true, true},
		{db, dns, "udp/54", true, false},
		{fe, prom, "tcp/9090", true, false},
		{gw, web, "tcp/443", true, true}, // payments is not isolated for egress
	}
	for _, ck := range checks {
		in, eg := decide(t, tr, e, ck)
		if in != ck.ingress || eg != ck.egress {
			t.Errorf("%s -> %s %s: ingress %v egress %v, want %v %v", ck.from, ck.to, ck.port, in, eg, ck.ingress, ck.egress)
		}
	}
}

func TestPodObjects(t *testing.T) {
	doc := `
apiVersion: v1
kind: PodList
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: dual, labels: {app: a}}
  spec:
    initContainers: [{name: sidecar, restartPolicy: Always, ports: [{name: proxy, containerPort: 15001}]}]
    containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}, {containerPort: 80}]}]
  status: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: host, namespace: default}
  spec: {hostNetwork: true, containers: [{name: c}]}
  status: {podIP: 192.0.2.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: pending}
  spec: {containers: [{name: c}]}
`
	c := &Cluster{}
	if err := c.Decode("pods.yaml", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range c.Pods {
		got = append(got, fmt.Sprintf("%s %v %v", p.ID(), p.IPs, p.Ports))
	}
	want := []string{
		"default/dual [10.0.0.5 fd00::5] [{proxy tcp 15001} {dns udp 53} { tcp 80}]",
		"default/pending [] []",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("pods:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	tr, err := Translate(c, Options{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(tr.Set.TargetNetworks); got != "[10.0.0.0/16]" {
		t.Errorf("target networks %s, want the option's", got)
	}
}

// The same universe always translates to the same text.
func TestTranslateDeterministic(t *testing.T) {
	var first []byte
	for i := range 5 {
		c, err := Load(filepath.Join("..", "examples", "k8s"))
		if err != nil {
			t.Fatal(err)
		}
		tr, err := Translate(c, Options{})
		if err != nil {
			t.Fatal(err)
		}
		text, err := MarshalSet(tr.Set)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = text
		} else if string(text) != string(first) {
			t.Fatalf("translation %d differs:\n%s\nfirst:\n%s", i, text, first)
		}
	}
}

// Load insists on defined namespaces (the API server does; and an unquoted
// "y" is the boolean true); Translate treats a policy in a namespace without
// pods as selecting nothing.
func TestUndefinedNamespace(t *testing.T) {
	dir := t.TempDir()
	policyDoc := "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: y}\nspec: {podSelector: {}}\n"
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(universe), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.yml"), []byte(policyDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), `networkpolicy true/p: namespace "true" is not defined`) {
		t.Fatalf("Load: got %v, want the undefined namespace", err)
	}
	c := &Cluster{}
	if err := c.Decode("a.yaml", []byte(universe)); err != nil {
		t.Fatal(err)
	}
	if err := c.Decode("b.yaml", []byte(policyDoc)); err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := mustCompile(t, tr.Set)
	for _, ck := range []check{{"x/web", "y/web", "tcp/9090", true, true}, {"y/client", "x/db", "tcp/5432", true, true}} {
		if in, eg := decide(t, tr, e, ck); in != ck.ingress || eg != ck.egress {
			t.Errorf("%s -> %s: ingress %v egress %v, want %v %v", ck.from, ck.to, in, eg, ck.ingress, ck.egress)
		}
	}
}
