package k8s

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// liveCases is the selection of cyclonus cases TestLiveConformance runs
// live: deny-all both ways, pod and namespace selectors (AND, OR), ipBlock
// with except both ways, numbered and named ports both ways, a named-port
// probe, and multi-step cases: policy update, policy deletion, pod and
// namespace label changes, pod creation and deletion.
// TRIREME_LIVE_CASES=all runs every case of the directory instead, or a
// comma-separated list of case names.
var liveCases = []string{
	"009-ingress-deny-all",
	"020-ingress-pods-by-label-ns-by-label",
	"076-ingress-2-peer-pods-by-label-ns-by-label-ipblock-with-except",
	"121-egress-2-peer-pods-by-label-ns-by-label-ipblock-with-except",
	"130-egress-ports-tcp-81",
	"164-ingress-ports-tcp-serve-80-tcp",
	"198-create-delete-pod",
	"219-should-support-a-default-deny-all-policy",
	"223-should-allow-ingress-access-on-one-named-port",
	"224-should-enforce-updated-policy",
	"225-should-allow-ingress-access-from-updated-namespace",
	"226-should-allow-ingress-access-from-updated-pod",
	"229-should-support-denying-of-egress-traffic-on-the-client-side-even-if-the-server-e",
	"230-should-stop-enforcing-policies-after-they-are-deleted",
}

// liveSubnet holds every pod address of the cyclonus universe
// (192.168.<namespace index>.<pod index × 10>): one L2 segment, the node
// bridge, as pods on one node.
var liveSubnet = netip.MustParsePrefix("192.168.0.0/16")

const (
	probeTimeout = 2 * time.Second
	probeWorkers = 24
)

type liveTally struct {
	cases, casesOK, steps, stepsOK int
	probes, skipped                int // TCP probes run live; UDP/SCTP probes not run
	cells, cellsOK                 int // off-diagonal reachable cells
	allowed, denied                int // cells observed open / closed
	deniedByTimeout                int // closed cells that timed out instead of a prompt RST
	diagonal                       int // diagonal cells, not compared live
}

// TestLiveConformance runs a selection of the cyclonus cases live. The
// universe is one node (testenv) whose pods are network-namespace PUs with
// the cases' addresses, each serving TCP 80 and 81; the real `trireme
// daemon` enforces the translated policy (written to its policy file, as a
// node integration would) and the pods are attached through the control
// API with their identity tags (reserved keys as orchestrator tags). For
// every step and every TCP probe, every ordered pair of distinct pods makes
// a real connection, and the observed matrix must equal cyclonus's
// expected reachable table, cell by cell.
//
// The diagonal is not compared: a pod connecting to its own address goes
// through its own loopback, never its veth, so no enforcer sees it (as
// cyclonus --ignore-loopback). UDP and SCTP probes are not run: those flows
// do not carry identity yet (docs/kubernetes.md).
func TestLiveConformance(t *testing.T) {
	testenv.RequireRoot(t)
	start := time.Now()
	cases := loadLiveCases(t)

	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{Subnet: liveSubnet, Suffix: sfx})
	// Every pod of every step, created up front: the universe's namespaces
	// exist for the whole test; a step attaches the pods it has.
	pus := map[string]*testenv.PU{}
	for _, c := range cases {
		for _, st := range c.Steps {
			for _, id := range slices.Sorted(maps.Keys(st.Pods)) {
				ip, err := netip.ParseAddr(st.Pods[id].IP)
				if err != nil || !liveSubnet.Contains(ip) {
					t.Fatalf("case %s: pod %s: address %q not in %v (%v)", c.Name, id, st.Pods[id].IP, liveSubnet, err)
				}
				if p, ok := pus[id]; ok {
					if p.Addr != ip {
						t.Fatalf("case %s: pod %s moves from %v to %v", c.Name, id, p.Addr, ip)
					}
					continue
				}
				p := n.AddPUAddr(ip)
				p.ServeEcho(80)
				p.ServeEcho(81)
				pus[id] = p
			}
		}
	}
	empty, err := Translate(&Cluster{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	initial, err := MarshalSet(empty.Set)
	if err != nil {
		t.Fatal(err)
	}
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: string(initial)})
	d.Start()
	u := &liveUniverse{t: t, d: d, pus: pus, attached: map[string]attachedPod{}}

	var all liveTally
	for _, c := range cases {
		all.cases++
		ok := true
		for si := range c.Steps {
			all.steps++
			if u.runStep(fmt.Sprintf("%s step %d", c.Name, si), &c.Steps[si], &all) {
				all.stepsOK++
			} else {
				ok = false
			}
		}
		if ok {
			all.casesOK++
		}
	}
	t.Logf("live conformance: cases %d/%d, steps %d/%d, TCP probes %d (%d UDP/SCTP probes not run), "+
		"off-diagonal cells %d/%d (observed %d open, %d closed, %d of them by timeout rather than RST; %d diagonal cells not compared), %d pods, %v",
		all.casesOK, all.cases, all.stepsOK, all.steps, all.probes, all.skipped, all.cellsOK, all.cells,
		all.allowed, all.denied, all.deniedByTimeout, all.diagonal, len(pus), time.Since(start).Round(100*time.Millisecond))
	if all.deniedByTimeout > 0 {
		t.Errorf("%d denied connections timed out instead of getting a prompt RST", all.deniedByTimeout)
	}
}

func loadLiveCases(t *testing.T) []*Case {
	dir := casesDir(t)
	names := liveCases
	switch sel := os.Getenv("TRIREME_LIVE_CASES"); sel {
	case "":
	case "all":
		files, err := filepath.Glob(filepath.Join(dir, "*.json"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no case in %s (%v)", dir, err)
		}
		names = nil
		for _, f := range files {
			names = append(names, strings.TrimSuffix(filepath.Base(f), ".json"))
		}
	default:
		names = strings.Split(sel, ",")
	}
	var out []*Case
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseCase(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c.Name = name
		out = append(out, c)
	}
	return out
}

// attachedPod is a pod the daemon enforces, with the tags it was attached
// with.
type attachedPod struct {
	id   string // the daemon's PU ID
	tags map[string]string
}

type liveUniverse struct {
	t        *testing.T
	d        *testenv.Daemon
	pus      map[string]*testenv.PU // by pod ID
	attached map[string]attachedPod // by pod ID
}

// runStep puts the step's state in force (policy, attached pods and their
// tags), probes it and compares; it reports whether every cell matched.
func (u *liveUniverse) runStep(label string, st *Step, all *liveTally) bool {
	t := u.t
	cl, err := st.Cluster()
	if err != nil {
		t.Errorf("%s: %v", label, err)
		return false
	}
	tr, err := Translate(cl, Options{})
	if err != nil {
		t.Errorf("%s: translate: %v", label, err)
		return false
	}
	text, err := MarshalSet(tr.Set)
	if err != nil {
		t.Errorf("%s: marshal: %v", label, err)
		return false
	}
	want := map[string]map[string]string{}
	for i := range tr.PUs {
		want[tr.PUs[i].ID()] = tagMapOf(&tr.PUs[i])
	}
	// Pods deleted, or whose identity changed (labels of the pod or of its
	// namespace), are detached first; the new policy goes in; then the
	// pods that are not attached are, with their current tags.
	for _, id := range slices.Sorted(maps.Keys(u.attached)) {
		a := u.attached[id]
		if w, ok := want[id]; !ok || !maps.Equal(w, a.tags) {
			if err := u.d.Client().DetachPU(a.id); err != nil {
				t.Fatalf("%s: detach %s: %v", label, id, err)
			}
			delete(u.attached, id)
		}
	}
	u.d.SetPolicy(string(text))
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if _, ok := u.attached[id]; ok {
			continue
		}
		labels, tags := map[string]string{}, map[string]string{}
		for k, v := range want[id] {
			if strings.HasPrefix(k, "@") {
				tags[k] = v
			} else {
				labels[k] = v
			}
		}
		info, err := u.d.Client().AttachPU(node.AttachRequest{NetNS: u.pus[id].Name, Labels: labels, Tags: tags})
		if err != nil {
			t.Fatalf("%s: attach %s: %v", label, id, err)
		}
		for k, v := range want[id] {
			if info.Tags[k] != v {
				t.Fatalf("%s: pod %s attached with tag %s=%q, want %q", label, id, k, info.Tags[k], v)
			}
		}
		u.attached[id] = attachedPod{id: info.ID, tags: want[id]}
	}

	ids := slices.Sorted(maps.Keys(want))
	ok := true
	for pi := range st.Probes {
		pr := &st.Probes[pi]
		if pr.Protocol != "TCP" {
			all.skipped++
			continue
		}
		all.probes++
		plabel := fmt.Sprintf("%s probe TCP/%s (port %d)", label, strings.Trim(string(pr.Port), `"`), pr.ResolvedPort)
		if have := sortedKeys(pr.Reachable); !slices.Equal(have, ids) {
			t.Errorf("%s: pods %v, expected table covers %v", plabel, ids, have)
			ok = false
			continue
		}
		got := u.probe(ids, uint16(pr.ResolvedPort))
		var diffs []string
		for _, from := range ids {
			for _, to := range ids {
				if from == to {
					all.diagonal++
					continue
				}
				all.cells++
				o := got[[2]string{from, to}]
				if o.err == nil {
					all.allowed++
				} else {
					all.denied++
					if !o.refused {
						all.deniedByTimeout++
					}
				}
				if w := pr.Reachable[from][to]; (o.err == nil) == w {
					all.cellsOK++
				} else {
					diffs = append(diffs, fmt.Sprintf("%s -> %s: connected %v (%v), want reachable %v (offline: ingress %v, egress %v)",
						from, to, o.err == nil, o.err, w, pr.Ingress[from][to], pr.Egress[from][to]))
				}
			}
		}
		if len(diffs) > 0 {
			ok = false
			t.Errorf("%s: %d wrong cells:\n  %s\npolicy:\n%s", plabel, len(diffs), strings.Join(diffs, "\n  "), text)
		}
	}
	return ok
}

func tagMapOf(p *PU) map[string]string {
	m := make(map[string]string, len(p.Tags))
	for _, tag := range p.Tags {
		m[tag.Key] = tag.Value
	}
	return m
}

// outcome is what one probe saw: nil, or the error, and whether it was a
// prompt refusal (RST) rather than a timeout.
type outcome struct {
	err     error
	refused bool
}

// probe connects over TCP from every pod to every other one on port, in
// parallel (bounded), each connection exchanging one message with the
// server's echo.
func (u *liveUniverse) probe(ids []string, port uint16) map[[2]string]outcome {
	type job struct{ from, to string }
	jobs := make(chan job)
	out := make(map[[2]string]outcome, len(ids)*len(ids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range probeWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				src, dst := u.pus[j.from], u.pus[j.to]
				err := src.Echo(netip.AddrPortFrom(dst.Addr, port), "probe "+j.from+" -> "+j.to, probeTimeout)
				o := outcome{err: err, refused: errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)}
				mu.Lock()
				out[[2]string{j.from, j.to}] = o
				mu.Unlock()
			}
		}()
	}
	for _, from := range ids {
		for _, to := range ids {
			if from != to {
				jobs <- job{from, to}
			}
		}
	}
	close(jobs)
	wg.Wait()
	return out
}
