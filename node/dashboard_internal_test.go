package node

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trireme-go/trireme/testenv/repo"
)

// TestGrafanaDashboardMetrics: every trireme_ metric the example dashboard
// queries is one the daemon describes.
func TestGrafanaDashboardMetrics(t *testing.T) {
	root, err := repo.Root()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "examples", "grafana", "trireme-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc, 64)
	newMetricsCollector(nil).Describe(ch)
	close(ch)
	var described strings.Builder
	for d := range ch {
		described.WriteString(d.String())
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
	names := regexp.MustCompile(`\btrireme_[a-z_]+\b`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range names.FindAllString(tg.Expr, -1) {
				n++
				if !strings.Contains(described.String(), `fqName: "`+m+`"`) {
					t.Errorf("panel %q: the daemon has no metric %s", p.Title, m)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d metrics found in the dashboard's queries", n)
	}
}
