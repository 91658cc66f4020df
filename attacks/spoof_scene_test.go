package attacks

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/testenv"
)

// Helpers of the anti-spoofing, link-local, NDP, attach-API and purge
// attacks (issue #11 items 1, 2, 3, 9, 12, 13).

// puDropsOf returns the kernel drop counters of the PU named name, as the
// daemon reports them per PU (PUInfo.Drops).
func puDropsOf(t *testing.T, d *testenv.Daemon, name string) map[string]uint64 {
	t.Helper()
	pus, err := d.Client().ListPUs()
	if err != nil {
		t.Fatalf("pu ls: %v", err)
	}
	for _, p := range pus {
		if p.Name == name {
			return p.Drops
		}
	}
	t.Fatalf("no PU named %s", name)
	return nil
}

// waitPUDrop waits (up to 5 s) until the PU's kernel drop counter of
// reason grew past before, and fails otherwise.
func waitPUDrop(t *testing.T, d *testenv.Daemon, name, reason string, before uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if puDropsOf(t, d, name)[reason] > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("PU %s: no %q drop counted (still %d)", name, reason, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// addAddr adds an address to a PU's eth0 from inside (what an attacker
// with root in its PU does).
func addAddr(t *testing.T, pu *testenv.PU, p netip.Prefix) {
	t.Helper()
	h, err := netlink.NewHandleAt(pu.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = 0x80 // IFA_F_NODAD: usable at once
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("add %v in %s: %v", p, pu.Name, err)
	}
}

// dialFromAddr connects from the PU over TCP with a chosen source address
// (bound before connecting, as an application does).
func dialFromAddr(pu *testenv.PU, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := pu.Do(func() error {
		var err error
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice(), Zone: zoneOf(src)}}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	return c, err
}

// zoneOf is eth0 for a link-local address (the PUs have one interface).
func zoneOf(a netip.Addr) string {
	if a.Is6() && a.IsLinkLocalUnicast() {
		return "eth0"
	}
	return ""
}

// linkLocalPort is addr%eth0:port, how a PU dials a neighbour's link-local
// address.
func linkLocalPort(a netip.Addr, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(a.WithZone("eth0"), port)
}

// udpSink is a UDP socket in a PU that records every datagram it gets.
type udpSink struct {
	c    *net.UDPConn
	mu   sync.Mutex
	got  []string
	from []netip.AddrPort
}

func listenUDPSink(t *testing.T, pu *testenv.PU, addr netip.Addr, port int) *udpSink {
	t.Helper()
	var c *net.UDPConn
	if err := pu.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, uint16(port))))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := &udpSink{c: c}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, string(buf[:n]))
			s.from = append(s.from, from)
			s.mu.Unlock()
		}
	}()
	return s
}

// received reports whether a datagram carrying marker arrived.
func (s *udpSink) received(marker string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.got {
		if strings.Contains(g, marker) {
			return true
		}
	}
	return false
}

// tcpSink is a TCP echo server in a PU that records who it accepted.
type tcpSink struct {
	Addr     netip.AddrPort
	mu       sync.Mutex
	accepted []netip.AddrPort
}

// listenTCPSink listens on addr:port in the PU (addr may be :: for every
// address, link-local included).
func listenTCPSink(t *testing.T, pu *testenv.PU, addr netip.Addr, port int) *tcpSink {
	t.Helper()
	ln := pu.ListenOn(addr, port)
	s := &tcpSink{Addr: netip.MustParseAddrPort(ln.Addr().String())}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted = append(s.accepted, netip.MustParseAddrPort(c.RemoteAddr().String()))
			s.mu.Unlock()
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

// acceptedFrom reports whether a connection from addr was accepted.
func (s *tcpSink) acceptedFrom(addr netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.accepted {
		if a.Addr().WithZone("") == addr.WithZone("") {
			return true
		}
	}
	return false
}

// waitLinkLocalReady waits until the PU's link-local address finished
// duplicate address detection (a new namespace's is tentative for about a
// second: sockets cannot use it yet).
func waitLinkLocalReady(t *testing.T, pu *testenv.PU) {
	t.Helper()
	h, err := netlink.NewHandleAt(pu.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		addrs, err := h.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no usable link-local address after 5 s", pu.Name)
		}
	}
}
