package k8s

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/testenv/repo"
)

// casesDir is the repository's testdata/netpol-cases, or
// $TRIREME_NETPOL_CASES (e.g. the held-out acceptance cases).
func casesDir(t testing.TB) string {
	if d := os.Getenv("TRIREME_NETPOL_CASES"); d != "" {
		return d
	}
	d, err := repo.NetpolCasesDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type tally struct {
	cases, casesOK, steps, stepsOK, probes int
	named                                  int // probes of a named port
	cells, cellsOK                         int // every cell of ingress, egress and reachable
	reach, reachOK                         int // the reachable table alone
	diag, diagOK                           int // reachable cells on the diagonal
}

// TestConformance runs every cyclonus case: each step's state translated,
// compiled with the real engine, every probe decided for every ordered pair
// of pods (diagonal included) and compared with the expected ingress, egress
// and reachable tables. The printed policy is parsed back and must decide
// every cell alike.
func TestConformance(t *testing.T) {
	dir := casesDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no case in %s", dir)
	}
	var all tally
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		all.cases++
		ok := t.Run(name, func(t *testing.T) { runCase(t, f, &all) })
		if ok {
			all.casesOK++
		}
	}
	t.Logf("conformance: cases %d/%d, steps %d/%d, probes %d (%d of a named port), cells %d/%d (reachable %d/%d, diagonal %d/%d)",
		all.casesOK, all.cases, all.stepsOK, all.steps, all.probes, all.named, all.cellsOK, all.cells,
		all.reachOK, all.reach, all.diagOK, all.diag)
}

func runCase(t *testing.T, file string, all *tally) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCase(data)
	if err != nil {
		t.Fatal(err)
	}
	for si := range c.Steps {
		all.steps++
		if runStep(t, si, &c.Steps[si], all) {
			all.stepsOK++
		}
	}
}

func runStep(t *testing.T, si int, st *Step, all *tally) bool {
	cl, err := st.Cluster()
	if err != nil {
		t.Errorf("step %d: %v", si, err)
		return false
	}
	tr, err := Translate(cl, Options{})
	if err != nil {
		t.Errorf("step %d: translate: %v", si, err)
		return false
	}
	eng, err := policy.Compile(tr.Set)
	if err != nil {
		t.Errorf("step %d: compile: %v", si, err)
		return false
	}
	// Round trip: the printed policy, parsed back, decides alike.
	text, err := MarshalSet(tr.Set)
	if err != nil {
		t.Errorf("step %d: marshal: %v", si, err)
		return false
	}
	set2, err := policy.Parse(fmt.Sprintf("step%d.yaml", si), text)
	if err != nil {
		t.Errorf("step %d: printed policy does not parse: %v\n%s", si, err, text)
		return false
	}
	eng2, err := policy.Compile(set2)
	if err != nil {
		t.Errorf("step %d: compile printed policy: %v", si, err)
		return false
	}

	ids := make([]string, len(tr.PUs))
	for i := range tr.PUs {
		ids[i] = tr.PUs[i].ID()
	}
	ok := true
	for pi := range st.Probes {
		pr := &st.Probes[pi]
		all.probes++
		proto, err := pr.Proto()
		if err != nil || pr.ResolvedPort < 1 || pr.ResolvedPort > 65535 {
			t.Errorf("step %d probe %d: bad probe %s/%d: %v", si, pi, pr.Protocol, pr.ResolvedPort, err)
			ok = false
			continue
		}
		label := fmt.Sprintf("step %d probe %s/%s (port %d)", si, pr.Protocol, strings.Trim(string(pr.Port), `"`), pr.ResolvedPort)
		if want, have := sortedKeys(pr.Reachable), slices.Sorted(slices.Values(ids)); !slices.Equal(want, have) {
			t.Errorf("%s: pods %v, expected tables cover %v", label, ids, want)
			ok = false
			continue
		}
		// A probe of a named port goes through ReachNamed (resolved on each
		// server); cyclonus resolved it to ResolvedPort on every pod.
		var m, m2 *Matrix
		if name := ""; json.Unmarshal(pr.Port, &name) == nil && name != "" {
			m, m2 = ReachNamed(eng, tr.PUs, proto, name), ReachNamed(eng2, tr.PUs, proto, name)
			all.named++
		} else {
			m, m2 = Reach(eng, tr.PUs, proto, uint16(pr.ResolvedPort)), Reach(eng2, tr.PUs, proto, uint16(pr.ResolvedPort))
		}
		var diffs []string
		for fi, from := range ids {
			for ti, to := range ids {
				cell := &m.Cells[fi][ti]
				got := [3]bool{cell.Ingress.Allowed(), cell.Egress.Allowed(), cell.Allowed()}
				want := [3]bool{pr.Ingress[from][to], pr.Egress[from][to], pr.Reachable[from][to]}
				for k, table := range []string{"ingress", "egress", "reachable"} {
					all.cells++
					if got[k] == want[k] {
						all.cellsOK++
					} else {
						diffs = append(diffs, fmt.Sprintf("%s %s -> %s: got %v, want %v (%s)", table, from, to, got[k], want[k], explain(cell, k)))
					}
				}
				all.reach++
				if got[2] == want[2] {
					all.reachOK++
				}
				if from == to {
					all.diag++
					if got[2] == want[2] {
						all.diagOK++
					}
				}
				c2 := &m2.Cells[fi][ti]
				if c2.Ingress.Allowed() != got[0] || c2.Egress.Allowed() != got[1] {
					diffs = append(diffs, fmt.Sprintf("round trip %s -> %s: printed policy decides ingress %v egress %v, translated %v %v",
						from, to, c2.Ingress.Allowed(), c2.Egress.Allowed(), got[0], got[1]))
				}
			}
		}
		if len(diffs) > 0 {
			ok = false
			const show = 12
			n, more := len(diffs), ""
			if len(diffs) > show {
				more = fmt.Sprintf("\n  ... and %d more", len(diffs)-show)
				diffs = diffs[:show]
			}
			t.Errorf("%s: %d wrong cells:\n  %s%s\npolicy:\n%s", label, n, strings.Join(diffs, "\n  "), more, text)
		}
	}
	return ok
}

func explain(c *Cell, table int) string {
	d := []policy.Decision{c.Ingress, c.Egress}
	var parts []string
	for i, name := range []string{"ingress", "egress"} {
		if table != 2 && table != i {
			continue
		}
		r := "no rule"
		if d[i].Rule != nil {
			r = fmt.Sprintf("rule %s of %s", d[i].Rule.Name, d[i].Rule.Policy)
		}
		parts = append(parts, fmt.Sprintf("%s %v by %s", name, d[i].Action, r))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
