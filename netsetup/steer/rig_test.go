package steer_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/inject"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/testenv"
)

// rig is one node whose first nSteered PUs are steered into TAPs; the
// other PUs are plain bridge ports ("external" hosts).
type rig struct {
	t      testing.TB
	node   *testenv.Node
	s      *steer.Steerer
	pus    []steer.PU
	taps   map[string]*tap.Tap // by TAP name
	inj    netsetup.InjectionPort
	toward []*inject.Injector // per steered PU
	away   *inject.Injector
	fwd    *forwarder
}

func tapNames(i int) (in, out string) { return fmt.Sprintf("t%di", i), fmt.Sprintf("t%do", i) }

func newRig(t testing.TB, nPUs, nSteered int) *rig {
	t.Helper()
	return newRigOn(t, testenv.NewNode(t, testenv.NodeOptions{PUs: nPUs}), nSteered)
}

// newRigOn steers the first nSteered PUs of an existing node.
func newRigOn(t testing.TB, node *testenv.Node, nSteered int) *rig {
	t.Helper()
	r := &rig{t: t, node: node, taps: map[string]*tap.Tap{}}
	r.node.MustDo(func() error {
		var err error
		r.inj, err = netsetup.EnsureInjectionPort(testenv.BridgeName, "inj", "injb", "")
		if err != nil {
			return err
		}
		for i := 0; i < nSteered; i++ {
			in, out := tapNames(i)
			for _, n := range []string{in, out} {
				tp, err := tap.Open(n)
				if err != nil {
					return err
				}
				r.taps[n] = tp
			}
			id := r.node.PUs[i].Identity()
			r.pus = append(r.pus, steer.PU{
				Name:   fmt.Sprintf("pu%d", i),
				Veth:   r.node.PUs[i].Link.HostName,
				TapIn:  r.taps[in].Index(),
				TapOut: r.taps[out].Index(),
				MAC:    id.MAC,
				Addrs:  id.Addrs,
			})
		}
		return nil
	})
	t.Cleanup(r.closeTaps)
	r.openSteerer()
	if err := r.s.Apply(r.pus, nil); err != nil {
		t.Fatalf("apply: %v", err)
	}
	r.openInjectors()
	return r
}

func (r *rig) openSteerer() {
	r.t.Helper()
	s, err := steer.Open(steer.Config{Node: "test" + r.node.Suffix, NetNS: int(r.node.NS)})
	if err != nil {
		r.t.Fatal(err)
	}
	r.s = s
	r.t.Cleanup(func() { s.Close() })
}

func (r *rig) openInjectors() {
	r.t.Helper()
	r.node.MustDo(func() error {
		r.toward = r.toward[:0]
		for i := range r.pus {
			j, err := inject.New(r.node.PUs[i].Link.HostIndex, r.s.Mark())
			if err != nil {
				return err
			}
			r.toward = append(r.toward, j)
			r.t.Cleanup(func() { j.Close() })
		}
		j, err := inject.New(r.inj.HostIndex, 0)
		if err != nil {
			return err
		}
		r.away = j
		r.t.Cleanup(func() { j.Close() })
		return nil
	})
}

// reopenTaps attaches to the persistent TAPs again (a daemon restart).
func (r *rig) reopenTaps() {
	r.t.Helper()
	r.node.MustDo(func() error {
		for name := range r.taps {
			tp, err := tap.Open(name)
			if err != nil {
				return err
			}
			r.taps[name] = tp
		}
		return nil
	})
}

func (r *rig) closeTaps() {
	for _, tp := range r.taps {
		tp.Close()
	}
}

// forwarder is the test's stand-in for the dataplane: it passes every
// steered frame on in its direction, completing partial checksums of
// non-GSO frames in software, and authorizes a flow once the packet after
// the handshake (the first TCP packet without SYN, or the first packet of
// a non-TCP flow) has been injected.
type forwarder struct {
	r     *rig
	wg    sync.WaitGroup
	reads atomic.Int64
	// byProto counts IP frames per IP protocol: the PUs' own IPv6
	// chatter (MLD reports, router solicitations) is steered too, and
	// tests must not count it as their flow's frames.
	byProto [256]atomic.Int64
	errs    atomic.Int64
	// closes counts TCP frames with FIN or RST: they are steered even for
	// authorized flows.
	closes atomic.Int64
	mu     sync.Mutex
	authd  map[string]bool
	// noAuth: never authorize, every packet crosses userspace.
	noAuth  bool
	gso     atomic.Int64 // GSO super-packets read
	maxRead atomic.Int64 // largest frame read
	last    atomic.Value // error
}

func (r *rig) startForwarder() *forwarder { return r.startForwarderOpts(false) }

func (r *rig) startForwarderOpts(noAuth bool) *forwarder {
	f := &forwarder{r: r, authd: map[string]bool{}, noAuth: noAuth}
	for i, pu := range r.pus {
		in, out := tapNames(i)
		f.run(pu.Name, r.taps[in], r.away)
		f.run(pu.Name, r.taps[out], r.toward[i])
	}
	r.fwd = f
	return f
}

// stop closes the TAPs (the dataplane dies) and waits for the readers.
func (f *forwarder) stop() {
	f.r.closeTaps()
	f.wg.Wait()
}

func (f *forwarder) run(pu string, tp *tap.Tap, out *inject.Injector) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		buf := make([]byte, tap.MaxFrame)
		for {
			n, err := tp.Read(buf)
			if err != nil {
				if !tap.IsClosed(err) {
					f.fail(err)
				}
				return
			}
			f.reads.Add(1)
			if err := f.forward(pu, buf[:n], out); err != nil {
				f.fail(err)
			}
		}
	}()
}

func (f *forwarder) fail(err error) {
	f.errs.Add(1)
	f.last.Store(err)
}

func (f *forwarder) forward(pu string, pkt []byte, out *inject.Injector) error {
	h, err := vnet.Decode(pkt)
	if err != nil {
		return err
	}
	frame := pkt[vnet.HdrLen:]
	if h.IsGSO() {
		f.gso.Add(1)
	}
	if n := int64(len(pkt)); n > f.maxRead.Load() {
		f.maxRead.Store(n)
	}
	if h.Flags&vnet.FlagNeedsCsum != 0 && !h.IsGSO() {
		if err := vnet.CompleteChecksum(&h, frame); err != nil {
			return err
		}
		_ = h.Encode(pkt)
	}
	if err := out.Write(pkt); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	t, flags, ok := parse(frame)
	if ok {
		f.byProto[t.Proto].Add(1)
		if t.Proto == ipproto.TCP && flags&0x05 != 0 {
			f.closes.Add(1)
		}
	}
	if !ok || f.noAuth || (t.Proto == ipproto.TCP && flags&0x02 != 0) {
		return nil
	}
	key := pu + t.String()
	rkey := pu + t.Reverse().String()
	f.mu.Lock()
	done := f.authd[key] || f.authd[rkey]
	f.authd[key] = true
	f.mu.Unlock()
	if done {
		return nil
	}
	return f.r.s.Authorize(pu, t, time.Minute)
}

// parse extracts the 5-tuple and TCP flags of an IPv4 or IPv6 (without
// extension headers) Ethernet frame.
func parse(f []byte) (steer.Tuple, uint8, bool) {
	if len(f) < 34 {
		return steer.Tuple{}, 0, false
	}
	ip := f[14:]
	var t steer.Tuple
	var l4 []byte
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		ihl := int(ip[0]&0x0f) * 4
		if ihl < 20 || len(ip) < ihl+4 {
			return steer.Tuple{}, 0, false
		}
		t = steer.Tuple{Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])), Proto: ipproto.Proto(ip[9])}
		l4 = ip[ihl:]
	case 0x86dd:
		if len(ip) < 44 {
			return steer.Tuple{}, 0, false
		}
		t = steer.Tuple{Src: netip.AddrFrom16([16]byte(ip[8:24])), Dst: netip.AddrFrom16([16]byte(ip[24:40])), Proto: ipproto.Proto(ip[6])}
		l4 = ip[40:]
	default:
		return steer.Tuple{}, 0, false
	}
	var flags uint8
	if t.Proto == ipproto.TCP || t.Proto == ipproto.UDP {
		t.SrcPort = binary.BigEndian.Uint16(l4[0:])
		t.DstPort = binary.BigEndian.Uint16(l4[2:])
	}
	// An echo is keyed as the dataplane keys it: the identifier is the
	// port of the side that sent the request, the other side's is 0.
	if len(l4) >= 8 && (t.Proto == ipproto.ICMP && t.Src.Is4() || t.Proto == ipproto.ICMPv6 && t.Src.Is6()) {
		id := binary.BigEndian.Uint16(l4[4:])
		switch l4[0] {
		case 8, 128:
			t.SrcPort = id
		case 0, 129:
			t.DstPort = id
		}
	}
	if t.Proto == ipproto.TCP && len(l4) >= 14 {
		flags = l4[13]
	}
	return t, flags, true
}

func (f *forwarder) check(t testing.TB) {
	t.Helper()
	if n := f.errs.Load(); n != 0 {
		t.Fatalf("forwarder: %d errors, last: %v", n, f.last.Load())
	}
}

var errTimeout = errors.New("timeout")
