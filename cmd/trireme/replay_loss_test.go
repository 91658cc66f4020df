package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/pcapio"
)

// TestReplayDatagramLoss runs `trireme replay` on a crafted capture of one
// UDP flow between two PUs over a wire that loses the first reply (the
// topology's `lose`): the summary shows the repeated hello and reply and
// the loss, the flow log has the flow allowed on both sides, and the
// server's PU got the client's datagrams.
func TestReplayDatagramLoss(t *testing.T) {
	dir := t.TempDir()
	udp := func(src, dst net.IP, sp, dp uint16, payload string) []byte {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, src[3]}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, dst[3]}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src, DstIP: dst}
		u := &layers.UDP{SrcPort: layers.UDPPort(sp), DstPort: layers.UDPPort(dp)}
		u.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, u, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		return bytes.Clone(buf.Bytes())
	}
	c, s := net.IPv4(10, 1, 0, 1).To4(), net.IPv4(10, 1, 0, 2).To4()
	capture := filepath.Join(dir, "loss.pcap")
	w, err := pcapio.Create(capture)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	for _, p := range []struct {
		at    time.Duration
		frame []byte
	}{
		{0, udp(c, s, 5000, 53, "q1")},
		{300 * time.Millisecond, udp(c, s, 5000, 53, "q2")},
		{310 * time.Millisecond, udp(s, c, 53, 5000, "a1")},
	} {
		if err := w.Write(t0.Add(p.at), p.frame); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	topo, pol := filepath.Join(dir, "topology.yaml"), filepath.Join(dir, "policy.yaml")
	for path, body := range map[string]string{
		topo: "targetNetworks: [10.1.0.0/24]\nlose: {reply: 1}\npus:\n  - {name: c, ip: 10.1.0.1, tags: {app: c}}\n  - {name: s, ip: 10.1.0.2, tags: {app: s}}\n",
		pol:  "policies:\n  - name: all\n    selector: \"*\"\n    ingress: [{name: any-in, action: allow}]\n    egress: [{name: any-out, action: allow}]\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out")
	stdout, err := runReplay(t, "--topology", topo, "--policy", pol, "--out", out, capture)
	if err != nil {
		t.Fatal(err, stdout)
	}
	for _, want := range []string{"forwarded      3\n", "dropped        0\n", "handshake      2 hello, 2 reply, 1 confirm on the wire, 1 lost\n", "flow records   2\n"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("summary lacks %q:\n%s", want, stdout)
		}
	}
	rs := records(t, filepath.Join(out, "flows.jsonl"))
	if len(rs) != 2 {
		t.Fatalf("records: %+v", rs)
	}
	for _, r := range rs {
		if r.Action != "allow" || r.Client.Port() != 5000 || r.Server.Port() != 53 {
			t.Fatalf("record: %+v", r)
		}
	}
	if got := frames(t, filepath.Join(out, "delivered-s.pcap")); len(got) != 2 {
		t.Fatalf("s got %d datagrams, want q1 and q2", len(got))
	}
}
