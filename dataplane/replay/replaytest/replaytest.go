// Package replaytest makes synthetic captures for replay tests and
// benchmarks: many TCP connections between many PUs, each with a real
// handshake (MSS, SACK, window scale), request/response exchanges with
// consistent sequence numbers and a FIN teardown, interleaved as on a busy
// network. Nothing large is stored: captures are made when needed.
package replaytest

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Spec shapes a capture. Zero fields take the defaults of Default.
type Spec struct {
	// PUs are spread over Nodes nodes (PU i on node i mod Nodes).
	PUs, Nodes int
	// Conns TCP connections, each between two different PUs, with
	// Exchanges request/response exchanges (a request, a response of two
	// segments, the client's ACK).
	Conns, Exchanges int
	// Concurrent connections are open at once, their packets interleaved.
	Concurrent int
	// Request and Response are the payload sizes (the response is sent as
	// two segments of Response/2).
	Request, Response int
	Seed              uint64
}

// Default is a capture of 2,000 connections between 200 PUs on 20 nodes:
// 92,000 packets.
var Default = Spec{PUs: 200, Nodes: 20, Conns: 2000, Exchanges: 10, Concurrent: 200,
	Request: 200, Response: 1200, Seed: 1}

// WithDefaults is s with its zero fields set from Default.
func (s Spec) WithDefaults() Spec {
	d := Default
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&s.PUs, d.PUs)
	set(&s.Nodes, d.Nodes)
	set(&s.Conns, d.Conns)
	set(&s.Exchanges, d.Exchanges)
	set(&s.Concurrent, d.Concurrent)
	set(&s.Request, d.Request)
	set(&s.Response, d.Response)
	s.PUs = max(s.PUs, 2)
	return s
}

// PacketsPerConn is the number of packets one connection has.
func (s Spec) PacketsPerConn() int { return 3 + 4*s.WithDefaults().Exchanges + 3 }

// PU is one PU of the capture's topology.
type PU struct {
	Name, Node string
	IP         netip.Addr
}

// PUList lists the capture's PUs: pu<i> at 10.1.0.0/16 + i + 1 on
// node<i mod Nodes>, all in 10.1.0.0/16 (the target network).
func (s Spec) PUList() []PU {
	s = s.WithDefaults()
	out := make([]PU, s.PUs)
	for i := range out {
		out[i] = PU{Name: fmt.Sprintf("pu%d", i), Node: fmt.Sprintf("node%d", i%s.Nodes), IP: addr(i)}
	}
	return out
}

func addr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte((i + 1) >> 8), byte(i + 1)}) }

func mac(i int) net.HardwareAddr {
	return net.HardwareAddr{2, 0, 0, 1, byte((i + 1) >> 8), byte(i + 1)}
}

// TopologyYAML is the topology file of the capture (trireme replay
// --topology): every PU tagged app=<name>.
func (s Spec) TopologyYAML() string {
	var b strings.Builder
	b.WriteString("targetNetworks: [10.1.0.0/16]\npus:\n")
	for _, p := range s.PUList() {
		fmt.Fprintf(&b, "  - {name: %s, node: %s, ip: %s, tags: {app: %s}}\n", p.Name, p.Node, p.IP, p.Name)
	}
	return b.String()
}

// conn is one connection being written.
type conn struct {
	c, s       int // PU indexes
	cport      uint16
	cseq, sseq uint32
	step       int // packets written so far
}

// Write writes the capture (pcap, nanosecond timestamps) to w and returns
// the number of packets.
func Write(w io.Writer, spec Spec) (int, error) {
	s := spec.WithDefaults()
	pw := pcapgo.NewWriterNanos(w)
	if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewPCG(s.Seed, s.Seed^0x9e3779b97f4a7c15))
	g := gen{s: s, payload: make([]byte, max(s.Request, s.Response)), buf: gopacket.NewSerializeBuffer()}
	for i := range g.payload {
		g.payload[i] = byte(i)
	}
	t := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var active []*conn
	started, n := 0, 0
	per := s.PacketsPerConn()
	for started < s.Conns || len(active) > 0 {
		for len(active) < s.Concurrent && started < s.Conns {
			c := &conn{c: rng.IntN(s.PUs), cport: uint16(1024 + started%60000), cseq: rng.Uint32(), sseq: rng.Uint32()}
			c.s = (c.c + 1 + rng.IntN(s.PUs-1)) % s.PUs
			active = append(active, c)
			started++
		}
		i := rng.IntN(len(active))
		c := active[i]
		f, err := g.next(c)
		if err != nil {
			return n, err
		}
		t = t.Add(time.Duration(5+rng.IntN(20)) * time.Microsecond)
		if err := pw.WritePacket(gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(f), Length: len(f)}, f); err != nil {
			return n, err
		}
		n++
		if c.step == per {
			active[i] = active[len(active)-1]
			active = active[:len(active)-1]
		}
	}
	return n, nil
}

type gen struct {
	s       Spec
	payload []byte
	buf     gopacket.SerializeBuffer
}

const (
	fin = 1 << iota
	syn
	rst
	psh
	ack
)

// next returns the connection's next packet.
func (g *gen) next(c *conn) ([]byte, error) {
	step := c.step
	c.step++
	ex := g.s.Exchanges
	half := g.s.Response / 2
	switch {
	case step == 0:
		c.cseq++
		return g.frame(c, true, syn, c.cseq-1, 0, 0)
	case step == 1:
		c.sseq++
		return g.frame(c, false, syn|ack, c.sseq-1, c.cseq, 0)
	case step == 2:
		return g.frame(c, true, ack, c.cseq, c.sseq, 0)
	case step < 3+4*ex:
		switch (step - 3) % 4 {
		case 0: // request
			c.cseq += uint32(g.s.Request)
			return g.frame(c, true, psh|ack, c.cseq-uint32(g.s.Request), c.sseq, g.s.Request)
		case 1, 2: // the response in two segments
			c.sseq += uint32(half)
			return g.frame(c, false, psh|ack, c.sseq-uint32(half), c.cseq, half)
		default:
			return g.frame(c, true, ack, c.cseq, c.sseq, 0)
		}
	case step == 3+4*ex:
		c.cseq++
		return g.frame(c, true, fin|ack, c.cseq-1, c.sseq, 0)
	case step == 4+4*ex:
		c.sseq++
		return g.frame(c, false, fin|ack, c.sseq-1, c.cseq, 0)
	}
	return g.frame(c, true, ack, c.cseq, c.sseq, 0)
}

func (g *gen) frame(c *conn, fromClient bool, flags int, seq, ackN uint32, n int) ([]byte, error) {
	src, dst := c.c, c.s
	sport, dport := c.cport, uint16(8080)
	if !fromClient {
		src, dst, sport, dport = dst, src, dport, sport
	}
	eth := &layers.Ethernet{SrcMAC: mac(src), DstMAC: mac(dst), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
		SrcIP: addr(src).AsSlice(), DstIP: addr(dst).AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ackN,
		Window: 502, FIN: flags&fin != 0, SYN: flags&syn != 0, RST: flags&rst != 0, PSH: flags&psh != 0, ACK: flags&ack != 0}
	if flags&syn != 0 {
		tcp.Window = 64240
		tcp.Options = []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, err
	}
	if err := gopacket.SerializeLayers(g.buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(g.payload[:n])); err != nil {
		return nil, err
	}
	return g.buf.Bytes(), nil
}
