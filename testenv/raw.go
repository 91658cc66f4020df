package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RawPort is an AF_PACKET socket on a PU's eth0: the attacker's hand. It
// sends any frame, whatever the PU's kernel would build (spoofed MACs and
// addresses, bad flags, forged tokens), and reads every frame that reaches
// the PU's interface. The socket is created inside the PU namespace and
// closed by t.Cleanup. Sniff opens one on any interface of any namespace
// (a bridge port: what crosses the wire there, both ways).
type RawPort struct {
	t       testing.TB
	label   string // namespace and interface, for messages
	fd      int
	ifindex int
	MAC     net.HardwareAddr // the interface's own MAC

	mu     sync.Mutex
	closed bool
}

// Raw opens a RawPort on the PU's eth0. It reads only what reaches the PU,
// not what the PU sends.
func (p *PU) Raw() *RawPort {
	p.t.Helper()
	return openRaw(p.t, p.NS, p.Name, "eth0", true)
}

// Sniff opens a RawPort on interface ifname of namespace ns that reads the
// frames it receives and the frames it transmits.
func Sniff(t testing.TB, ns netns.NsHandle, ifname string) *RawPort {
	t.Helper()
	return openRaw(t, ns, "", ifname, false)
}

func openRaw(t testing.TB, ns netns.NsHandle, nsName, ifname string, ignoreOutgoing bool) *RawPort {
	t.Helper()
	r := &RawPort{t: t, label: nsName + "/" + ifname}
	err := netsetup.InNetns(ns, func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		r.ifindex, r.MAC = ifc.Index, ifc.HardwareAddr
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		if ignoreOutgoing {
			// What the PU itself sends is not what reached it.
			if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
				unix.Close(fd)
				return err
			}
		}
		r.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("testenv: raw socket on %s: %v", r.label, err)
	}
	t.Cleanup(r.Close)
	return r
}

// Close closes the socket (idempotent).
func (r *RawPort) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		unix.Close(r.fd)
	}
}

// Send writes one whole Ethernet frame on the PU's interface.
func (r *RawPort) Send(frame []byte) error {
	return unix.Sendto(r.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: r.ifindex})
}

// MustSend is Send that fails the test on error. A frame the kernel
// dropped for lack of room (ENOBUFS: a veth hands the frame to its peer's
// per-CPU backlog, and when the softirqs that drain it are starved on a
// loaded machine the veth drops it and the write says so) is sent again
// after a pause, for up to sendRetry: the test meant it to be sent, and
// nothing of it reached the other side.
func (r *RawPort) MustSend(frame []byte) {
	r.t.Helper()
	err := r.Send(frame)
	for pause, deadline := time.Millisecond, time.Now().Add(sendRetry); errors.Is(err, unix.ENOBUFS) && time.Now().Before(deadline); pause = min(2*pause, 100*time.Millisecond) {
		time.Sleep(pause)
		err = r.Send(frame)
	}
	if err != nil {
		r.t.Fatalf("testenv: raw send on %s: %v", r.label, err)
	}
}

// sendRetry bounds how long MustSend sends a frame again that the kernel
// dropped for lack of room.
const sendRetry = 10 * time.Second

// Frame serializes layers into a frame, fixing lengths and computing
// checksums (the caller ties a TCP/UDP layer to its IP layer with
// SetNetworkLayerForChecksum, as gopacket requires).
func Frame(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		panic(fmt.Sprintf("testenv: serialize: %v", err))
	}
	return append([]byte(nil), buf.Bytes()...)
}

// Capture reads frames that reach the PU's interface for d and returns
// those match accepts (all when match is nil). Frames already queued on the
// socket before the call are included.
func (r *RawPort) Capture(d time.Duration, match func(gopacket.Packet) bool) []gopacket.Packet {
	var out []gopacket.Packet
	buf := make([]byte, 65536)
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return out
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return out
		}
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return out
		}
		p := gopacket.NewPacket(append([]byte(nil), buf[:n]...), layers.LayerTypeEthernet, gopacket.Default)
		if match == nil || match(p) {
			out = append(out, p)
		}
	}
}

// Eth returns an Ethernet header from src to dst of the given type.
func Eth(src, dst net.HardwareAddr, typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: typ}
}

// IPv4 returns an IPv4 header (TTL 64) from src to dst carrying proto.
func IPv4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Id: 0x4242}
}

// TCPSegment builds a whole Ethernet/IPv4/TCP frame with valid checksums.
// flags is any of "S", "A", "F", "R", "P" (e.g. "SA" for SYN-ACK).
func TCPSegment(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, flags string, seq, ack uint32, payload []byte) []byte {
	ip := IPv4(src.Addr(), dst.Addr(), layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack, Window: 64240}
	for _, f := range flags {
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
			panic("testenv: unknown TCP flag " + string(f))
		}
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return Frame(Eth(srcMAC, dstMAC, layers.EthernetTypeIPv4), ip, tcp, gopacket.Payload(payload))
}

// UDPDatagram builds a whole Ethernet/IPv4/UDP frame with valid checksums.
func UDPDatagram(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	ip := IPv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return Frame(Eth(srcMAC, dstMAC, layers.EthernetTypeIPv4), ip, udp, gopacket.Payload(payload))
}

// MACOf returns the MAC of the PU's eth0.
func (p *PU) MACOf() net.HardwareAddr {
	p.t.Helper()
	var mac net.HardwareAddr
	if err := p.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		p.t.Fatalf("testenv: MAC of %s: %v", p.Name, err)
	}
	return mac
}

// GatewayMAC returns the MAC of the node bridge (the PUs' gateway).
func (n *Node) GatewayMAC() net.HardwareAddr {
	n.t.Helper()
	var mac net.HardwareAddr
	n.MustDo(func() error {
		ifc, err := net.InterfaceByName(n.Bridge)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	})
	return mac
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
