package k8s_test

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// liveSubnet holds every pod address of the cyclonus universe
// (192.168.<namespace index>.<pod index × 10>): one L2 segment, the node
// bridge, as pods on one node.
var liveSubnet = netip.MustParsePrefix("192.168.0.0/16")

const (
	probeTimeout = 5 * time.Second
	probeWorkers = 24
)

type liveTally struct {
	cases, casesOK, steps, stepsOK int
	probes, udpProbes, skipped     int // TCP and UDP probes run live (udpProbes of them UDP); SCTP probes not run
	cells, cellsOK                 int // off-diagonal reachable cells
	allowed, denied                int // cells observed open / closed
	deniedByTimeout                int // closed cells that timed out instead of a prompt RST
	blamed, blamedOK               int // closed cells whose denial the right enforcer recorded
	blamedEgress                   int // of which by the client's egress
	diagonal                       int // diagonal cells, not compared live
}

// TestLiveConformance runs the cyclonus cases live: every case of the
// directory (casesDir), or the ones TRIREME_LIVE_CASES=a,b,... names (file
// stems). The universe is one node (testenv) whose pods are network-namespace PUs with
// the cases' addresses, each serving TCP and UDP 80 and 81; the real `trireme
// daemon` enforces the translated policy (written to its policy file, as a
// node integration would) and the pods are attached through the control
// API with their identity tags (reserved keys as orchestrator tags). For
// every step and every TCP and UDP probe, every ordered pair of distinct
// pods makes a real connection (UDP: a datagram and its echo), and the
// observed matrix must equal cyclonus's expected reachable table, cell by
// cell. Each denial must also be in the flow log, recorded by the enforcer
// expected to deny: the server's when its ingress denies (it decides
// first, on the SYN or the datagram handshake's hello), else the client's.
// A denial must be prompt: a RST (TCP), an ICMP unreachable (UDP), not a
// timeout.
//
// The diagonal is not compared: a pod connecting to its own address goes
// through its own loopback, never its veth, so no enforcer sees it (as
// cyclonus --ignore-loopback). SCTP probes are not run: SCTP does not carry
// identity (docs/kubernetes.md, docs/dataplane.md).
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
				serveUDPEcho(t, p, 80)
				serveUDPEcho(t, p, 81)
				pus[id] = p
			}
		}
	}
	empty, err := k8s.Translate(&k8s.Cluster{}, k8s.Options{})
	if err != nil {
		t.Fatal(err)
	}
	initial, err := k8s.MarshalSet(empty.Set)
	if err != nil {
		t.Fatal(err)
	}
	// Every denied probe is looked for in the flow log by its pair: no
	// aggregation of repeated refusals (docs/daemon.md, Flow records).
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: string(initial), Extra: "flowLogAggregate: 0s\n"})
	d.Start()
	u := &liveUniverse{t: t, ds: []*testenv.Daemon{d}, pus: pus, attached: map[string]attachedPod{}}
	u.apply = u.applyFiles
	ready := time.Now()

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
	t.Logf("live conformance: cases %d/%d, steps %d/%d, TCP and UDP probes %d (%d UDP; %d SCTP probes not run), "+
		"off-diagonal cells %d/%d (observed %d open, %d closed, %d of them by timeout rather than RST; %d diagonal cells not compared), "+
		"denials recorded by the expected side %d/%d (%d by the client's egress), %d pods, universe ready in %v, steps %v",
		all.casesOK, all.cases, all.stepsOK, all.steps, all.probes, all.udpProbes, all.skipped, all.cellsOK, all.cells,
		all.allowed, all.denied, all.deniedByTimeout, all.diagonal, all.blamedOK, all.blamed, all.blamedEgress, len(pus),
		ready.Sub(start).Round(100*time.Millisecond), time.Since(ready).Round(100*time.Millisecond))
	if st, err := d.Client().Stats(); err == nil {
		t.Logf("daemon counters %v, drops %v", st.Counters, st.Drops)
	}
	if all.deniedByTimeout > 0 {
		t.Errorf("%d denied connections timed out instead of getting a prompt RST", all.deniedByTimeout)
	}
}

func loadLiveCases(t *testing.T) []*k8s.Case {
	dir := k8s.CasesDir(t)
	var names []string
	if sel := os.Getenv("TRIREME_LIVE_CASES"); sel != "" {
		names = strings.Split(sel, ",")
	} else {
		files, err := filepath.Glob(filepath.Join(dir, "*.json"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no case in %s (%v)", dir, err)
		}
		for _, f := range files {
			names = append(names, strings.TrimSuffix(filepath.Base(f), ".json"))
		}
	}
	var out []*k8s.Case
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := k8s.ParseCase(data)
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
	t *testing.T
	// ds are the nodes' daemons: their flow logs hold the denials.
	ds       []*testenv.Daemon
	pus      map[string]*testenv.PU // by pod ID
	attached map[string]attachedPod // by pod ID (apply = applyFiles)
	// apply puts a step's state in force (translated as tr, printed as
	// text); it reports whether it could.
	apply       func(label string, st *k8s.Step, tr *k8s.Translation, text []byte) bool
	mu          sync.Mutex
	nextPort    int
	nextUDPPort int
}

// runStep puts the step's state in force (policy, attached pods and their
// tags), probes it and compares; it reports whether every cell matched.
func (u *liveUniverse) runStep(label string, st *k8s.Step, all *liveTally) bool {
	t := u.t
	cl, err := st.Cluster()
	if err != nil {
		t.Errorf("%s: %v", label, err)
		return false
	}
	tr, err := k8s.Translate(cl, k8s.Options{})
	if err != nil {
		t.Errorf("%s: translate: %v", label, err)
		return false
	}
	text, err := k8s.MarshalSet(tr.Set)
	if err != nil {
		t.Errorf("%s: marshal: %v", label, err)
		return false
	}
	if !u.apply(label, st, tr, text) {
		return false
	}
	ids := make([]string, 0, len(tr.PUs))
	for i := range tr.PUs {
		ids = append(ids, tr.PUs[i].ID())
	}
	slices.Sort(ids)
	ok := true
	for pi := range st.Probes {
		pr := &st.Probes[pi]
		var proto ipproto.Proto
		switch pr.Protocol {
		case "TCP":
			proto = ipproto.TCP
		case "UDP":
			proto = ipproto.UDP
			all.udpProbes++
		default:
			all.skipped++
			continue
		}
		all.probes++
		plabel := fmt.Sprintf("%s probe %s/%s (port %d)", label, pr.Protocol, strings.Trim(string(pr.Port), `"`), pr.ResolvedPort)
		if have := k8s.SortedKeys(pr.Reachable); !slices.Equal(have, ids) {
			t.Errorf("%s: pods %v, expected table covers %v", plabel, ids, have)
			ok = false
			continue
		}
		logStart := u.flowLogSize()
		got := u.probe(ids, proto, uint16(pr.ResolvedPort))
		var diffs []string
		var blame []blameCell
		var wrong [][2]string
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
					if !w {
						// The server's ingress decides first: it sees
						// the SYN (the hello); the client's egress
						// decides on the SYN-ACK (the reply), which a
						// denying server never sends.
						dir := "ingress"
						if pr.Ingress[from][to] {
							dir = "egress"
						}
						blame = append(blame, blameCell{from, to, dir})
					}
				} else {
					wrong = append(wrong, [2]string{from, to})
					diffs = append(diffs, fmt.Sprintf("%s -> %s: connected %v (%v), want reachable %v (offline: ingress %v, egress %v)",
						from, to, o.err == nil, o.err, w, pr.Ingress[from][to], pr.Egress[from][to]))
				}
			}
		}
		all.blamed += len(blame)
		for _, b := range blame {
			if b.direction == "egress" {
				all.blamedEgress++
			}
		}
		missing := u.checkBlame(blame, logStart, proto, uint16(pr.ResolvedPort))
		all.blamedOK += len(blame) - len(missing)
		diffs = append(diffs, missing...)
		if len(wrong) > 0 {
			time.Sleep(time.Second) // let the records of the wrong cells be written
			recs := u.pairRecords(logStart, proto, uint16(pr.ResolvedPort))
			for _, c := range wrong {
				diffs = append(diffs, fmt.Sprintf("records of %s -> %s: %v", c[0], c[1], recs[c]))
			}
			// The first wrong cell's state, to tell a lost packet's cause.
			t.Logf("%s: state after the wrong cell %s -> %s:\n%s", plabel, wrong[0][0], wrong[0][1], u.diagnose(wrong[0][0], wrong[0][1]))
		}
		if len(diffs) > 0 {
			ok = false
			t.Errorf("%s: %d wrong cells:\n  %s\npolicy:\n%s", plabel, len(diffs), strings.Join(diffs, "\n  "), text)
		}
	}
	return ok
}

// applyFiles puts a step in force as a node integration without an API
// server would: the translated policy written to the daemon's policy file,
// each pod attached through the control API with its tags.
func (u *liveUniverse) applyFiles(label string, st *k8s.Step, tr *k8s.Translation, text []byte) bool {
	t := u.t
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
			if err := u.ds[0].Client().DetachPU(a.id); err != nil {
				t.Fatalf("%s: detach %s: %v", label, id, err)
			}
			delete(u.attached, id)
		}
	}
	u.ds[0].SetPolicy(string(text))
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if _, ok := u.attached[id]; ok {
			continue
		}
		labels, tags := map[string]string{}, map[string]string{}
		for k, v := range want[id] {
			if identity.IsReserved(k) {
				tags[k] = v
			} else {
				labels[k] = v
			}
		}
		info, err := u.ds[0].Client().AttachPU(node.AttachRequest{NetNS: u.pus[id].Name, Labels: labels, Tags: tags})
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

	return true
}

func tagMapOf(p *k8s.PU) map[string]string {
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

// probe connects over TCP (or UDP) from every pod to every other one on
// port, in parallel (bounded), each connection exchanging one message with
// the server's echo.
func (u *liveUniverse) probe(ids []string, proto ipproto.Proto, port uint16) map[[2]string]outcome {
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
				msg, to := "probe "+j.from+" -> "+j.to, netip.AddrPortFrom(dst.Addr, port)
				var err error
				if proto == ipproto.UDP {
					err = udpEchoFrom(src, u.udpPort(), to, msg, probeTimeout)
				} else {
					err = src.EchoFrom(u.localPort(), to, msg, probeTimeout)
				}
				o := outcome{err: err, refused: errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EHOSTUNREACH)}
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

// blameCell is a denied cell and the enforcer expected to deny it: the
// server's ("ingress") or the client's ("egress").
type blameCell struct{ from, to, direction string }

// flowLogSize is the size of each daemon's flow log.
func (u *liveUniverse) flowLogSize() []int64 {
	out := make([]int64, len(u.ds))
	for i, d := range u.ds {
		if st, err := os.Stat(d.FlowLog); err == nil {
			out[i] = st.Size()
		}
	}
	return out
}

// recordsSince returns the records of every daemon's flow log past offsets.
func (u *liveUniverse) recordsSince(offsets []int64) []dataplane.Record {
	var out []dataplane.Record
	for i, d := range u.ds {
		out = append(out, d.RecordsSince(offsets[i])...)
	}
	return out
}

// checkBlame waits (up to 5 s: records are written asynchronously) until
// the flow log, past offset, holds a denial by the expected enforcer for
// every cell, and returns the cells that have none.
func (u *liveUniverse) checkBlame(cells []blameCell, offset []int64, proto ipproto.Proto, port uint16) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		found := map[blameCell]bool{}
		for _, r := range u.recordsSince(offset) {
			if r.Proto == proto && r.Server.Port() == port && r.Action != "allow" && r.End != dataplane.EndRejected {
				found[blameCell{u.podAt(r.Client.Addr()), u.podAt(r.Server.Addr()), r.Direction}] = true
			}
		}
		var missing []blameCell
		for _, c := range cells {
			if !found[c] {
				missing = append(missing, c)
			}
		}
		if len(missing) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		recs := u.pairRecords(offset, proto, port)
		var out []string
		for _, c := range missing {
			out = append(out, fmt.Sprintf("%s -> %s: denied, but no denial in the flow log by the %s side (%s); records: %v",
				c.from, c.to, c.direction, map[string]string{"ingress": "server", "egress": "client"}[c.direction], recs[[2]string{c.from, c.to}]))
		}
		return out
	}
}

// pairRecords lists, for the report, the flow log's records past offset of
// connections to port, by pair of pods.
func (u *liveUniverse) pairRecords(offset []int64, proto ipproto.Proto, port uint16) map[[2]string][]string {
	out := map[[2]string][]string{}
	for _, r := range u.recordsSince(offset) {
		if r.Proto != proto || r.Server.Port() != port {
			continue
		}
		k := [2]string{u.podAt(r.Client.Addr()), u.podAt(r.Server.Addr())}
		out[k] = append(out[k], fmt.Sprintf("%s side %s %s (end %s, client port %d, packets out %d in %d)",
			r.Direction, r.Action, r.Reason, r.End, r.Client.Port(), r.PacketsOut, r.PacketsIn))
	}
	return out
}

// localPort is the client port of a probe: 0, the kernel chooses, as for
// any client. Kernels reuse the 4-tuples of refused connections at once
// (no TIME_WAIT), so the probes also check that a new connection on such a
// 4-tuple is decided afresh. TRIREME_LIVE_FIXED_PORTS=1 gives every probe a
// 4-tuple of its own instead (to tell a policy difference from a 4-tuple
// reuse problem when debugging).
func (u *liveUniverse) localPort() int {
	if os.Getenv("TRIREME_LIVE_FIXED_PORTS") == "" {
		return 0
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.nextPort++
	return 10000 + u.nextPort%55000
}

// serveUDPEcho answers every datagram to port of the pod with its payload.
func serveUDPEcho(t *testing.T, p *testenv.PU, port int) {
	c := p.ListenUDP(port)
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// udpEchoFrom sends msg from localPort (0: the kernel chooses) of src to
// addr and waits for its echo: nil, the timeout, or the error an ICMP
// error made of the wait (a denial: EHOSTUNREACH).
func udpEchoFrom(src *testenv.PU, localPort int, addr netip.AddrPort, msg string, timeout time.Duration) error {
	return src.Do(func() error {
		c, err := net.DialUDP("udp", &net.UDPAddr{Port: localPort}, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, len(msg)+1)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != msg {
			return fmt.Errorf("echo %q, sent %q", buf[:n], msg)
		}
		return nil
	})
}

// udpPort is the client port of a UDP probe: one of its own for every
// probe of the run. A datagram flow has no opening packet: a probe from a
// port the kernel chose again (it does, within seconds) on a 5-tuple whose
// flow an earlier step allowed would be that flow's next datagram, which
// keeps its decision across a policy change (docs/daemon.md,
// onPolicyChange) instead of being a new flow decided under the step's
// policy.
func (u *liveUniverse) udpPort() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.nextUDPPort++
	return 10000 + u.nextUDPPort%55000
}

func (u *liveUniverse) podAt(a netip.Addr) string {
	for id, p := range u.pus {
		if p.Addr == a {
			return id
		}
	}
	return a.String()
}
