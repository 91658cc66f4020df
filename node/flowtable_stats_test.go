package node_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// The flow table's configured size and share, and its fill overall and per
// PU, are what `trireme stats` (JSON and text) and /metrics show.
func TestFlowTableSizeAndFillVisible(t *testing.T) {
	s := newFlowScene(t, "flowTable: {capacity: 2048, perPU: 10%}\n")
	const conns = 5
	srv := netip.AddrPortFrom(s.web.Addr, 8080)
	for i := range conns {
		c, err := s.front.Dial(srv, 5*time.Second)
		if err != nil {
			t.Fatalf("frontend -> web #%d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if err := testenv.EchoConn(c, "held", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	ft := st.FlowTable
	if ft.Capacity != 2048 || ft.PerPU != 204 || ft.Flows < 2*conns {
		t.Fatalf("flowTable %+v: want capacity 2048, perPU 204 (10%%), at least %d flows (each held connection at both ends)", ft, 2*conns)
	}
	byName := map[string]node.PUFlowStats{}
	sum := 0
	for _, p := range st.PUFlows {
		byName[p.Name] = p
		sum += p.Flows
	}
	if byName[s.frontN].Flows < conns || byName[s.webN].Flows < conns || sum != ft.Flows {
		t.Fatalf("puFlows %+v: want frontend and web at %d or more each, summing to the table's %d", st.PUFlows, conns, ft.Flows)
	}

	metrics, err := s.d.Client().Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"trireme_flow_table_capacity 2048", "trireme_flow_table_per_pu 204",
		fmt.Sprintf("trireme_flows %d", ft.Flows), `trireme_dataplane_total{kind="evictions"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, name := range []string{s.frontN, s.webN} {
		id := ""
		for _, p := range st.PUFlows {
			if p.Name == name {
				id = p.ID
			}
		}
		re := regexp.MustCompile(`trireme_pu_flows\{pu="` + regexp.QuoteMeta(id) + `"\} (\d+)`)
		if m := re.FindStringSubmatch(metrics); m == nil || m[1] == "0" {
			t.Errorf("/metrics: no trireme_pu_flows for %s (%s): %v", name, id, m)
		}
		if !strings.Contains(metrics, `trireme_pu_flows_refused_total{pu="`+id+`"} 0`) {
			t.Errorf("/metrics: no trireme_pu_flows_refused_total 0 for %s", name)
		}
	}

	out := testenv.RunBin(t, "stats", "--socket", s.d.Socket)
	if !regexp.MustCompile(`flow table: \d+ of 2048 flows \([0-9.]+%\), 204 per PU at most, \d+ evictions`).MatchString(out) {
		t.Errorf("trireme stats: no flow table line:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(s.frontN) + `\s+\d+ flows \(\s*[0-9.]+% of its share\)`).MatchString(out) {
		t.Errorf("trireme stats: no per-PU fill for %s:\n%s", s.frontN, out)
	}
}
