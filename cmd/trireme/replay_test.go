package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/fixtures"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/dataplane/replay"
)

func runReplay(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return execCommand(t, newReplayCmd(), args...)
}

func frames(t *testing.T, path string) [][]byte {
	t.Helper()
	ps, err := pcapio.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(ps))
	for i := range ps {
		out[i] = ps[i].Frame
	}
	return out
}

func records(t *testing.T, path string) []dataplane.Record {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rs []dataplane.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r dataplane.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

// TestReplayCommand runs `trireme replay` on the example topology and policy
// with the capture they were written for, then with the client moved to
// env=dev (which the web tier rejects).
func TestReplayCommand(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	capture := filepath.Join(dir, "zeek-http-get.pcap")
	orig := frames(t, capture)
	examples := filepath.Join("..", "..", "examples")

	t.Run("allowed", func(t *testing.T) {
		out := t.TempDir()
		stdout, err := runReplay(t, "--topology", filepath.Join(examples, "topology.yaml"),
			"--policy", filepath.Join(examples, "policy.yaml"), "--out", out, "--json", capture)
		if err != nil {
			t.Fatal(err, stdout)
		}
		var sum replay.Summary
		if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
			t.Fatal(err, stdout)
		}
		if sum.PacketsIn != 14 || sum.Forwarded != 14 || len(sum.Dropped) != 0 || sum.ConnectionsAllowed != 1 || sum.Flows != 2 {
			t.Fatalf("summary: %+v", sum)
		}
		// Each PU got exactly the frames the other end's kernel sent.
		web, fe := frames(t, filepath.Join(out, "delivered-web.pcap")), frames(t, filepath.Join(out, "delivered-frontend.pcap"))
		if len(web)+len(fe) != 14 {
			t.Fatalf("delivered %d + %d", len(web), len(fe))
		}
		wi, fi := 0, 0
		for _, f := range orig {
			if bytes.Equal(f[26:30], []byte{141, 142, 228, 5}) { // from the frontend
				if !bytes.Equal(web[wi], f) {
					t.Fatalf("web got %x want %x", web[wi], f)
				}
				wi++
			} else {
				if !bytes.Equal(fe[fi], f) {
					t.Fatalf("frontend got %x want %x", fe[fi], f)
				}
				fi++
			}
		}
		wire := frames(t, filepath.Join(out, "wire.pcap"))
		if len(wire) != 14 || len(wire[0]) <= len(orig[0]) || len(wire[1]) <= len(orig[1]) || len(wire[2]) <= len(orig[2]) || !bytes.Equal(wire[3], orig[3]) {
			t.Fatal("wire: tokens expected on SYN, SYN-ACK and ACK only")
		}
		rs := records(t, filepath.Join(out, "flows.jsonl"))
		if len(rs) != 2 {
			t.Fatalf("records: %+v", rs)
		}
		for _, r := range rs {
			if r.Action != "allow" || r.Rule == nil || r.End != dataplane.EndOpen && r.End != dataplane.EndClosed {
				t.Fatalf("record: %+v", r)
			}
			if r.Direction == "ingress" && (r.Rule.Policy != "web" || r.Rule.Name != "from-frontend" || r.Local.ID != "web") {
				t.Fatalf("web's record: %+v", r)
			}
		}
		// Text summary.
		stdout, err = runReplay(t, "--topology", filepath.Join(examples, "topology.yaml"),
			"--policy", filepath.Join(examples, "policy.yaml"), capture)
		if err != nil || !strings.Contains(stdout, "forwarded      14") || !strings.Contains(stdout, "1 allowed, 0 denied") {
			t.Fatalf("text summary: %v\n%s", err, stdout)
		}
	})

	t.Run("rejected", func(t *testing.T) {
		topo, err := os.ReadFile(filepath.Join(examples, "topology.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		tp := filepath.Join(t.TempDir(), "topo.yaml")
		os.WriteFile(tp, bytes.Replace(topo, []byte("{app: frontend, env: prod"), []byte("{app: frontend, env: dev"), 1), 0o644)
		out := t.TempDir()
		stdout, err := runReplay(t, "--topology", tp, "--policy", filepath.Join(examples, "policy.yaml"), "--out", out, "--json", "--pki", capture)
		if err != nil {
			t.Fatal(err, stdout)
		}
		var sum replay.Summary
		json.Unmarshal([]byte(stdout), &sum)
		if sum.ConnectionsDenied != 1 || sum.Dropped["policy-rejected"] < 1 || sum.Forwarded != 0 {
			t.Fatalf("summary: %+v", sum)
		}
		if _, err := os.Stat(filepath.Join(out, "delivered-web.pcap")); !os.IsNotExist(err) {
			t.Fatal("the web PU received something")
		}
		fe := frames(t, filepath.Join(out, "delivered-frontend.pcap"))
		if len(fe) != 1 || fe[0][47]&0x04 == 0 { // TCP flags: RST
			t.Fatalf("frontend should get exactly one RST, got %d frames", len(fe))
		}
		rs := records(t, filepath.Join(out, "flows.jsonl"))
		if len(rs) < 1 || rs[0].Action != "reject" || rs[0].Reason != "policy-rejected" || rs[0].Rule.Name != "no-dev-clients" {
			t.Fatalf("records: %+v", rs)
		}
	})

	t.Run("errors", func(t *testing.T) {
		if _, err := runReplay(t, "--policy", filepath.Join(examples, "policy.yaml"), capture); err == nil {
			t.Fatal("missing --topology accepted")
		}
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(bad, []byte("pus:\n  - name: x\n    ip: 300.1.1.1\n"), 0o644)
		_, err := runReplay(t, "--topology", bad, "--policy", filepath.Join(examples, "policy.yaml"), capture)
		if err == nil || !strings.Contains(err.Error(), "bad.yaml:2:5") {
			t.Fatalf("bad topology: %v", err)
		}
		_, err = runReplay(t, "--topology", filepath.Join(examples, "topology.yaml"), "--policy", filepath.Join(examples, "policy.yaml"), "/nonexistent.pcap")
		if err == nil {
			t.Fatal("missing capture accepted")
		}
	})
}

// TestReplayTruncatedCapture: a capture cut inside a packet replays up to
// it: the summary of the packets read (text and JSON, with the error), the
// speed line, then the error naming the packet, and a non-zero exit; the
// files of --out hold what was replayed.
func TestReplayTruncatedCapture(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(filepath.Join(dir, "zeek-http-get.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	// The end of packet 9's record: 24-byte file header, then each record's
	// 16-byte header and data.
	end := 24
	for range 9 {
		end += 16 + int(uint32(whole[end+8])|uint32(whole[end+9])<<8|uint32(whole[end+10])<<16|uint32(whole[end+11])<<24)
	}
	examples := filepath.Join("..", "..", "examples")
	for name, cut := range map[string]int{"in a record header": end + 7, "in a record's data": end + 16 + 20} {
		t.Run(name, func(t *testing.T) {
			capture := filepath.Join(t.TempDir(), "cut.pcap")
			if err := os.WriteFile(capture, whole[:cut], 0o644); err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			args := []string{"--topology", filepath.Join(examples, "topology.yaml"), "--policy", filepath.Join(examples, "policy.yaml"), capture}
			stdout, err := runReplay(t, append([]string{"--json", "--out", out}, args...)...)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "packet 10: truncated capture") {
				t.Fatalf("error %v, want exit 1 naming packet 10", err)
			}
			var rep replayReport
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatal(err, stdout)
			}
			if rep.PacketsIn != 9 || rep.Forwarded != 9 || rep.Error != err.Error() || rep.Flows != 2 || rep.PacketsPerSecond <= 0 {
				t.Fatalf("report %+v", rep)
			}
			if recs := records(t, filepath.Join(out, "flows.jsonl")); len(recs) != 2 {
				t.Fatalf("%d flow records", len(recs))
			}
			stdout, err = runReplay(t, args...)
			if err == nil || !strings.Contains(stdout, "packets in     9\n") || !strings.Contains(stdout, "speed          ") {
				t.Fatalf("text: %v\n%s", err, stdout)
			}
		})
	}
}

// TestReplaySpeedJSON: the JSON summary carries the speed figures.
func TestReplaySpeedJSON(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	examples := filepath.Join("..", "..", "examples")
	stdout, err := runReplay(t, "--topology", filepath.Join(examples, "topology.yaml"), "--policy", filepath.Join(examples, "policy.yaml"),
		"--json", filepath.Join(dir, "zeek-http-get.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"seconds", "cpuSeconds", "packetsPerSecond", "packetsPerCPUSecond", "setupSeconds"} {
		if v, ok := m[k].(float64); !ok || v < 0 {
			t.Errorf("%s: %v", k, m[k])
		}
	}
	if m["packetsPerSecond"].(float64) <= 0 || m["packetsIn"].(float64) != 14 {
		t.Errorf("%v", m)
	}
	if _, ok := m["error"]; ok {
		t.Error("error set for a whole capture")
	}
}
