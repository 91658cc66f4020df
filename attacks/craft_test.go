package attacks

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/tokens"
)

// Frame crafting, victims that log what reaches their sockets, and drop
// counters of any daemon: the helpers of the attack files that are not the
// single-node scene's.

// vlanTag is one 802.1Q / 802.1ad tag: its TPID (the EtherType announcing
// it) and VLAN ID.
type vlanTag struct {
	tpid layers.EthernetType
	vid  uint16
}

// seg describes a TCP segment to craft, IPv4 or IPv6 by its addresses.
type seg struct {
	srcMAC, dstMAC net.HardwareAddr
	vlans          []vlanTag // outermost first
	src, dst       netip.AddrPort
	flags          string // any of "SAFRP"
	seq, ack       uint32
	opts           []layers.TCPOption
	payload        []byte
	ipID           uint16
}

// marker is trireme's TCP option (tokens.Option) as a gopacket option.
var marker = layers.TCPOption{OptionType: tokens.OptionKind, OptionLength: 4, OptionData: tokens.Option[2:]}

// mss is an ordinary MSS option, as a kernel puts on a SYN.
var mss = layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}

func (s seg) tcp() *layers.TCP {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()),
		Seq: s.seq, Ack: s.ack, Window: 64240, Options: s.opts}
	for _, f := range s.flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'F':
			tcp.FIN = true
		case 'R':
			tcp.RST = true
		case 'P':
			tcp.PSH = true
		default:
			panic("attacks: unknown TCP flag " + string(f))
		}
	}
	return tcp
}

// ipLayer returns the IP header of s and its EtherType.
func (s seg) ipLayer(proto layers.IPProtocol) (gopacket.SerializableLayer, gopacket.NetworkLayer, layers.EthernetType) {
	if s.src.Addr().Is4() {
		ip := testenv.IPv4(s.src.Addr(), s.dst.Addr(), proto)
		if s.ipID != 0 {
			ip.Id = s.ipID
		}
		return ip, ip, layers.EthernetTypeIPv4
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
	return ip, ip, layers.EthernetTypeIPv6
}

// link returns the Ethernet header and VLAN tags of s, ending in next.
func (s seg) link(next layers.EthernetType) []gopacket.SerializableLayer {
	if len(s.vlans) == 0 {
		return []gopacket.SerializableLayer{testenv.Eth(s.srcMAC, s.dstMAC, next)}
	}
	ls := []gopacket.SerializableLayer{testenv.Eth(s.srcMAC, s.dstMAC, s.vlans[0].tpid)}
	for i, v := range s.vlans {
		typ := next
		if i+1 < len(s.vlans) {
			typ = s.vlans[i+1].tpid
		}
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: v.vid, Type: typ})
	}
	return ls
}

// frame serializes s into a whole Ethernet frame with valid checksums.
func (s seg) frame() []byte {
	ipl, nl, et := s.ipLayer(layers.IPProtocolTCP)
	tcp := s.tcp()
	_ = tcp.SetNetworkLayerForChecksum(nl)
	return testenv.Frame(append(s.link(et), ipl, tcp, gopacket.Payload(s.payload))...)
}

// transport returns the TCP header and payload of s, checksummed for its
// addresses: the bytes that fragments carry.
func (s seg) transport() []byte {
	ipl, nl, _ := s.ipLayer(layers.IPProtocolTCP)
	tcp := s.tcp()
	_ = tcp.SetNetworkLayerForChecksum(nl)
	b := testenv.Frame(ipl, tcp, gopacket.Payload(s.payload))
	if s.src.Addr().Is4() {
		return b[20:]
	}
	return b[40:]
}

// fragment returns one IP fragment of the datagram of s: bytes of its
// transport data at byte offset off (a multiple of 8), with the more
// fragments flag more, IP identification (IPv4) or fragment ID (IPv6) id.
func (s seg) fragment(data []byte, off int, more bool, id uint32) []byte {
	if s.src.Addr().Is4() {
		ip := testenv.IPv4(s.src.Addr(), s.dst.Addr(), layers.IPProtocolTCP)
		ip.Id, ip.FragOffset = uint16(id), uint16(off/8)
		if more {
			ip.Flags = layers.IPv4MoreFragments
		}
		return testenv.Frame(append(s.link(layers.EthernetTypeIPv4), ip, gopacket.Payload(data))...)
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment,
		SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
	fh := make([]byte, 8, 8+len(data))
	fh[0] = byte(layers.IPProtocolTCP)
	v := uint16(off/8) << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], v)
	binary.BigEndian.PutUint32(fh[4:], id)
	return testenv.Frame(append(s.link(layers.EthernetTypeIPv6), ip, gopacket.Payload(append(fh, data...)))...)
}

// fixTCPChecksum recomputes the TCP checksum of an untagged IPv4 frame
// without IP options (after its bytes were edited by hand).
func fixTCPChecksum(f []byte) []byte {
	const l3, l4 = 14, 34
	end := l3 + int(binary.BigEndian.Uint16(f[l3+2:]))
	f[l4+16], f[l4+17] = 0, 0
	var ph [12]byte
	copy(ph[:8], f[l3+12:l3+20])
	ph[9] = 6
	binary.BigEndian.PutUint16(ph[10:], uint16(end-l4))
	var s uint32
	for i := 0; i < len(ph); i += 2 {
		s += uint32(binary.BigEndian.Uint16(ph[i:]))
	}
	binary.BigEndian.PutUint16(f[l4+16:], packet.Checksum(s, f[l4:end]))
	return f
}

// tcpOf returns the TCP layer of a captured packet, or nil.
func tcpOf(p gopacket.Packet) *layers.TCP {
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	return tcp
}

// fromPort matches captured TCP segments whose source port is one of ports.
func fromPort(ports ...uint16) func(gopacket.Packet) bool {
	return func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		if tcp == nil {
			return false
		}
		for _, port := range ports {
			if uint16(tcp.SrcPort) == port {
				return true
			}
		}
		return false
	}
}

// carrying matches captured frames whose bytes contain s.
func carrying(s string) func(gopacket.Packet) bool {
	return func(p gopacket.Packet) bool { return bytes.Contains(p.Data(), []byte(s)) }
}

// victim is a TCP server in a PU that echoes and logs every connection it
// accepts and every byte it reads: what reached the victim's socket.
type victim struct {
	Addr     netip.AddrPort
	mu       sync.Mutex
	accepted []string
	read     bytes.Buffer
}

// serveVictim listens in pu on addr:port.
func serveVictim(t *testing.T, pu *testenv.PU, addr netip.Addr, port int) *victim {
	ln := pu.ListenOn(addr, port)
	v := &victim{Addr: netip.MustParseAddrPort(ln.Addr().String())}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			v.mu.Lock()
			v.accepted = append(v.accepted, c.RemoteAddr().String())
			v.mu.Unlock()
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						v.mu.Lock()
						v.read.Write(buf[:n])
						v.mu.Unlock()
						_, _ = c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return v
}

// Accepted returns the remote addresses of the connections accepted so far.
func (v *victim) Accepted() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.accepted...)
}

// Read returns every byte read from accepted connections so far.
func (v *victim) Read() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.read.String()
}

// dropsOf returns a daemon's drop counters by reason.
func dropsOf(t *testing.T, d *testenv.Daemon) map[string]uint64 {
	t.Helper()
	st, err := d.Client().Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return st.Drops
}

// countersOf returns a daemon's other counters.
func countersOf(t *testing.T, d *testenv.Daemon) map[string]uint64 {
	t.Helper()
	st, err := d.Client().Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return st.Counters
}

// waitDropOn waits (up to 5 s) until d's drop counter of one of reasons
// has grown past before, and returns that reason; it fails the test
// otherwise. Several reasons: the drop may be named by a mechanism that
// acts earlier (e.g. anti-spoofing in the kernel before the enforcer).
func waitDropOn(t *testing.T, d *testenv.Daemon, before map[string]uint64, reasons ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := dropsOf(t, d)
		for _, r := range reasons {
			if now[r] > before[r] {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no drop counted as %v (before %v, now %v)", reasons, before, now)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRecordOf waits (up to 5 s) for d's flow record of the connection from
// client to server, as its server's enforcer wrote it.
func waitRecordOf(t *testing.T, d *testenv.Daemon, client, server netip.AddrPort) dataplane.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range d.Records() {
			if r.Client == client && r.Server == server && r.Direction == "ingress" {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no flow record of %v -> %v", client, server)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// silenceRSTs makes the kernel of pu drop the RSTs it would send: an
// attacker who answers handshakes by hand keeps its own kernel from
// resetting them (the table goes with the namespace).
func silenceRSTs(t *testing.T, pu *testenv.PU) {
	t.Helper()
	err := pu.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "attacker"})
		ch := c.AddChain(&nftables.Chain{Name: "out", Table: tbl, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{packet.RST}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("silence RSTs in %s: %v", pu.Name, err)
	}
}

// firstFrame reads frames reaching r for up to d and returns the first that
// match accepts, or nil.
func firstFrame(r *testenv.RawPort, d time.Duration, match func(gopacket.Packet) bool) gopacket.Packet {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if got := r.Capture(50*time.Millisecond, match); len(got) > 0 {
			return got[0]
		}
	}
	return nil
}

// synack matches a SYN-ACK toward port.
func synackTo(port uint16) func(gopacket.Packet) bool {
	return func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		return tcp != nil && tcp.SYN && tcp.ACK && uint16(tcp.DstPort) == port
	}
}

// synTo matches a SYN (not a SYN-ACK) toward port that carries a payload
// (a token frame, where an enforcer added one).
func synTo(port uint16) func(gopacket.Packet) bool {
	return func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		return tcp != nil && tcp.SYN && !tcp.ACK && uint16(tcp.DstPort) == port && len(tcp.Payload) > 0
	}
}

// hasMarker reports whether a TCP segment carries trireme's option.
func hasMarker(tcp *layers.TCP) bool {
	for _, o := range tcp.Options {
		if o.OptionType == tokens.OptionKind && bytes.Equal(o.OptionData, tokens.Option[2:]) {
			return true
		}
	}
	return false
}

// tcpExt reads pu's TcpExt counters (/proc/net/netstat of its namespace):
// what its TCP did with a segment the test cannot observe on the wire.
func tcpExt(t *testing.T, pu *testenv.PU) map[string]uint64 {
	t.Helper()
	var raw []byte
	err := pu.Do(func() (err error) {
		// thread-self: /proc/self/net is the namespace of the process's
		// main thread, not of the goroutine's locked thread.
		raw, err = os.ReadFile("/proc/thread-self/net/netstat")
		return err
	})
	if err != nil {
		t.Fatalf("netstat of %s: %v", pu.Name, err)
	}
	lines := strings.Split(string(raw), "\n")
	out := map[string]uint64{}
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 || names[0] != "TcpExt:" {
			continue
		}
		for j := 1; j < len(names); j++ {
			v, _ := strconv.ParseUint(values[j], 10, 64)
			out[names[j]] = v
		}
	}
	if len(out) == 0 {
		t.Fatalf("netstat of %s: no TcpExt counters", pu.Name)
	}
	return out
}
