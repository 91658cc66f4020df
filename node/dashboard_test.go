package node_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/testenv/repo"
)

// TestGrafanaDashboardKinds: every kind of trireme_dataplane_total the
// example dashboard queries is one a live daemon exports, so the dashboard
// does not go blank when a name changes (the metric names are checked by
// TestGrafanaDashboardMetrics).
func TestGrafanaDashboardKinds(t *testing.T) {
	root, err := repo.Root()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "examples", "grafana", "trireme-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	s := newFlowScene(t, "")
	s.connect(t)
	st, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	kinds := regexp.MustCompile(`kind=~?"([^"]+)"`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, k := range kinds.FindAllStringSubmatch(tg.Expr, -1) {
				for _, kind := range strings.Split(k[1], "|") {
					n++
					if _, ok := st.Counters[kind]; !ok {
						t.Errorf("panel %q: trireme_dataplane_total has no kind %q", p.Title, kind)
					}
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d kinds found in the dashboard's queries", n)
	}
}
