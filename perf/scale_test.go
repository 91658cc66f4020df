package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/testenv"
)

// RulesPolicy has the rules it says, every filler refuses or ignores the
// measured flow, and the fillers are real rules: peers that carry what
// they name are decided by them.
func TestRulesPolicy(t *testing.T) {
	if _, err := RulesPolicy(1, DefaultPort); err == nil {
		t.Fatal("a policy of 1 rule: no error")
	}
	client := netip.MustParseAddr("10.201.1.2")
	server := netip.MustParseAddr("10.201.1.3")
	for _, n := range []int{2, 3, 10, 1001} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			text, err := RulesPolicy(n, DefaultPort)
			if err != nil {
				t.Fatal(err)
			}
			set, err := policy.Parse("rules.yaml", []byte(text))
			if err != nil {
				t.Fatal(err)
			}
			rules := 0
			for _, p := range set.Policies {
				rules += len(p.Ingress) + len(p.Egress)
			}
			if rules != n {
				t.Fatalf("%d rules, want %d", rules, n)
			}
			set.TargetNetworks = append(set.TargetNetworks, targets)
			eng, err := policy.Compile(set)
			if err != nil {
				t.Fatal(err)
			}
			decide := func(clientTags map[string]string, port uint16) policy.ConnDecision {
				return eng.Decide(policy.Conn{
					Client: eng.PU(identity.NewTags(clientTags), client),
					Server: eng.PU(identity.NewTags(map[string]string{"app": "perf-server"}), server),
					Proto:  ipproto.TCP, Port: port,
				})
			}
			d := decide(map[string]string{"app": "perf-client"}, DefaultPort)
			if !d.Allowed() || d.Ingress.Rule == nil || d.Ingress.Rule.Name != "from-perf-client" || d.Egress.Rule == nil || d.Egress.Rule.Name != "to-perf-server" {
				t.Fatalf("the measured flow: %+v, want allowed by the two allow rules", d)
			}
			if n >= 3 {
				// filler-0 rejects a client labelled shard=f0.
				d := decide(map[string]string{"app": "perf-client", "shard": "f0"}, DefaultPort)
				if d.Allowed() || d.Ingress.Rule == nil || d.Ingress.Rule.Name != "filler-0" {
					t.Fatalf("a client with shard=f0: %+v, want refused by filler-0", d)
				}
			}
		})
	}
}

// daemonVariant is a PSK daemon of the binary under test.
func daemonVariant(t *testing.T, name, policy string) *Daemon {
	return &Daemon{VariantName: name, Binary: testenv.Binary(t), Secrets: PSKSecrets(), Policy: policy}
}

func finite(v Value) bool { return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) }

func checkPath(t *testing.T, what string, p PathCost) {
	t.Helper()
	for name, v := range map[string]Value{"rtt": p.RTTUs, "kernel rtt": p.KernelRTTUs, "rtt ratio": p.RTTRatio,
		"bulk": p.BulkGbps, "kernel bulk": p.KernelBulkGbps, "bulk ratio": p.BulkRatio} {
		if !finite(v) || v <= 0 {
			t.Errorf("%s: %s %v", what, name, v)
		}
	}
}

// checkRun fails the test on notes (something failed during the run) and
// stops it when the rows are not one per size.
func checkRun(t *testing.T, notes []string, rows, sizes int) {
	t.Helper()
	for _, n := range notes {
		t.Errorf("note: %s", n)
	}
	if rows != sizes {
		t.Fatalf("%d rows, want %d", rows, sizes)
	}
}

func TestFlowsScenario(t *testing.T) {
	noLeftovers(t)
	sizes := []int{10, 20}
	res, err := RunFlows(context.Background(), FlowsConfig{Sizes: sizes, Rounds: 1, Duration: 200 * time.Millisecond,
		CalibrationElements: 50000, Variant: daemonVariant(t, "psk", "")})
	if err != nil {
		t.Fatal(err)
	}
	checkRun(t, res.Notes, len(res.Rows), len(sizes))
	if !finite(res.BaseRSSMiB) || res.BaseRSSMiB <= 0 {
		t.Errorf("base RSS %v", res.BaseRSSMiB)
	}
	if c := res.Calibration; len(c.Deltas) != c.Reps || c.Reps != 3 || !finite(c.BytesPerElement) || c.BytesPerElement <= 0 {
		t.Errorf("set calibration %+v", c)
	}
	for i, row := range res.Rows {
		n := sizes[i]
		// Each connection is a flow of the client PU and one of the
		// server PU, authorized in both PUs' sets; the RTT and bulk
		// connections of the rounds before may still be there.
		if row.Flows != n || row.DaemonFlows < 2*n || row.SetElements < 2*n {
			t.Errorf("row %d: %d connections, %d daemon flows, %d set elements; want %d, at least %d, at least %d",
				i, row.Flows, row.DaemonFlows, row.SetElements, n, 2*n, 2*n)
		}
		if !finite(row.RSSMiB) || row.RSSMiB <= 0 || !finite(row.BytesPerFlow) || !finite(row.SetMiB) || row.SetMiB <= 0 || !finite(row.OpenSeconds) || row.OpenSeconds <= 0 {
			t.Errorf("row %d: %+v", i, row)
		}
		checkPath(t, fmt.Sprintf("%d flows", n), row.Path)
	}
	if res.RestartFlows != 20 || !finite(res.RestartMs) || res.RestartMs <= 0 || res.FlowsAfter < 2*20 || !finite(res.RSSAfterMiB) {
		t.Errorf("restart: %+v", res)
	}
	if res.HeldOK != 20 || res.HeldFailed != 0 {
		t.Errorf("after the restart %d held connections answered, %d failed; want 20, 0", res.HeldOK, res.HeldFailed)
	}
	var tbl, js bytes.Buffer
	if err := res.WriteTable(&tbl); err != nil {
		t.Fatal(err)
	}
	if err := res.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back FlowsResult
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Rows) != 2 || back.Rows[1].SetElements != res.Rows[1].SetElements {
		t.Fatalf("JSON does not read back: %v\n%s", err, js.String())
	}
	if !strings.Contains(tbl.String(), "set elements") {
		t.Errorf("table:\n%s", tbl.String())
	}
}

func TestScaleScenario(t *testing.T) {
	noLeftovers(t)
	sizes := []int{3, 5}
	res, err := RunScale(context.Background(), ScaleConfig{Sizes: sizes, Window: 1, Rounds: 1, Duration: 200 * time.Millisecond,
		Variant: daemonVariant(t, "psk", "")})
	if err != nil {
		t.Fatal(err)
	}
	checkRun(t, res.Notes, len(res.Rows), len(sizes))
	for i, row := range res.Rows {
		if row.PUs != sizes[i] || !finite(row.RSSMiB) || row.RSSMiB <= 0 || row.AttachMs <= 0 {
			t.Errorf("row %d: %+v", i, row)
		}
		// Two base chains per PU (in_ and out_), each with rules.
		if row.Nft.Tables != 1 || row.Nft.Chains != 2*row.PUs || row.Nft.Rules < row.Nft.Chains || row.Nft.Sets == 0 {
			t.Errorf("row %d: %d PUs, nftables %+v", i, row.PUs, row.Nft)
		}
		checkPath(t, fmt.Sprintf("%d PUs", row.PUs), row.Path)
	}
	if a, b := res.Rows[0].Nft, res.Rows[1].Nft; b.Rules <= a.Rules {
		t.Errorf("rules did not grow with the PUs: %d, then %d", a.Rules, b.Rules)
	}
	if !finite(res.RestartMs) || res.RestartMs <= 0 {
		t.Errorf("restart %v", res.RestartMs)
	}
	var tbl bytes.Buffer
	if err := res.WriteTable(&tbl); err != nil || !strings.Contains(tbl.String(), "nft tables/chains/rules") {
		t.Errorf("table: %v\n%s", err, tbl.String())
	}
}

func TestRulesScenario(t *testing.T) {
	noLeftovers(t)
	pol, err := RulesPolicy(10, DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), Config{
		Variants: []Variant{Kernel{}, daemonVariant(t, "rules-10", pol)}, Rounds: 1, Duration: 300 * time.Millisecond,
		Clients: 2, ConnectionsOnly: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Notes {
		t.Errorf("note: round %d %s: %s", n.Round, n.Variant, n.Message)
	}
	if len(res.Figures) != 10 {
		t.Errorf("%d figures, want the 10 connection figures", len(res.Figures))
	}
	for _, f := range res.Figures {
		if !connectionFigure(f.Key) {
			t.Errorf("figure %s in a connections-only run", f.Key)
		}
		vf := f.Variants["rules-10"]
		if vf.Value == nil || vf.Value.Median <= 0 || (!f.Enforcer && (vf.Ratio == nil || vf.Ratio.Median <= 0)) {
			t.Errorf("rules-10 %s: %+v", f.Key, vf)
		}
	}
}
