package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/flow"
)

func TestFlowTableConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	const head = "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\n"
	tests := []struct {
		name     string
		config   string
		capacity int // 0: the machine's default
		perPU    int // 0: a quarter of the capacity
		wantErr  []string
	}{
		{name: "defaults", config: head},
		{name: "numbers", config: head + "flowTable: {capacity: 200000, perPU: 30000}\n", capacity: 200000, perPU: 30000},
		{name: "percentage", config: head + "flowTable:\n  capacity: 100_000\n  perPU: 10%\n", capacity: 100000, perPU: 10000},
		{name: "capacity only", config: head + "flowTable: {capacity: 40000}\n", capacity: 40000, perPU: 10000},
		{name: "whole table per PU", config: head + "flowTable: {capacity: 4096, perPU: 100%}\n", capacity: 4096, perPU: 4096},
		{name: "capacity too small", config: head + "flowTable:\n  capacity: 10\n", wantErr: []string{"config.yaml:5:13: flowTable.capacity:", "between 1024"}},
		{name: "capacity zero", config: head + "flowTable: {capacity: 0}\n", wantErr: []string{"config.yaml:4:23: flowTable.capacity:"}},
		{name: "capacity not a number", config: head + "flowTable:\n  capacity: lots\n", wantErr: []string{"config.yaml:5:13: flowTable.capacity:"}},
		{name: "capacity too large", config: head + "flowTable: {capacity: 99999999999}\n", wantErr: []string{":4:23: flowTable.capacity:"}},
		{name: "perPU over capacity", config: head + "flowTable:\n  capacity: 2048\n  perPU: 5000\n", wantErr: []string{"config.yaml:6:10: flowTable.perPU: 5000"}},
		{name: "perPU percent over 100", config: head + "flowTable:\n  perPU: 150%\n", wantErr: []string{"config.yaml:5:10: flowTable.perPU:"}},
		{name: "perPU zero", config: head + "flowTable:\n  perPU: 0%\n", wantErr: []string{"config.yaml:5:10: flowTable.perPU:"}},
		{name: "perPU a list", config: head + "flowTable:\n  perPU: [1]\n", wantErr: []string{"config.yaml:5:10: flowTable.perPU:"}},
		{name: "unknown field", config: head + "flowTable: {size: 5}\n", wantErr: []string{"line 4", "size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "config.yaml", tt.config)
			c, err := LoadConfig(path)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("want an error")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.capacity
			if want == 0 {
				want = DefaultFlowCapacity()
			}
			wantPer := tt.perPU
			if wantPer == 0 {
				wantPer = want / 4
			}
			if fc := c.FlowTable.Flows(); fc.Capacity != want || fc.PerPU != wantPer {
				t.Fatalf("flows config %+v, want capacity %d, per PU %d", fc, want, wantPer)
			}
		})
	}
}

func TestPacketBudgetConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "psk", strings.Repeat("k", 32))
	writeFile(t, dir, "policy.yaml", "policies: []\n")
	const head = "node: n1\nsecrets: {pskFile: psk}\npolicy: policy.yaml\n"
	tests := []struct {
		name        string
		config      string
		rate, burst uint32
		wantErr     string
	}{
		{name: "default", config: head, rate: DefaultPacketBudget, burst: DefaultPacketBudget},
		{name: "rate only", config: head + "puPacketBudget: {rate: 3000}\n", rate: 3000, burst: 3000},
		{name: "both", config: head + "puPacketBudget: {rate: 3000, burst: 100}\n", rate: 3000, burst: 100},
		{name: "off", config: head + "puPacketBudget: {rate: 0}\n", rate: 0, burst: 0},
		{name: "negative", config: head + "puPacketBudget:\n  rate: -5\n", wantErr: "config.yaml:5:9: puPacketBudget.rate:"},
		{name: "huge burst", config: head + "puPacketBudget:\n  burst: 99999999999\n", wantErr: "config.yaml:5:10: puPacketBudget.burst:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadConfig(writeFile(t, dir, "config.yaml", tt.config))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b := c.PUPacketBudget.Budget(); b.Rate != tt.rate || b.Burst != tt.burst {
				t.Fatalf("budget %+v, want %d/%d", b, tt.rate, tt.burst)
			}
		})
	}
}

// TestDefaultFlowCapacity: derived from the machine's memory (1/128 of it
// at 460 bytes a flow), within bounds.
func TestDefaultFlowCapacity(t *testing.T) {
	mem := machineMemory()
	if mem == 0 {
		t.Fatal("no memory size read from /proc/meminfo")
	}
	n := DefaultFlowCapacity()
	want := int(min(max(mem/flowMemoryShare/bytesPerFlow, flow.DefaultCapacity), MaxFlowCapacity))
	if n != want || n < flow.DefaultCapacity || n > MaxFlowCapacity {
		t.Fatalf("default capacity %d for %d MB, want %d", n, mem>>20, want)
	}
	t.Logf("%d MB usable: default flow table %d flows", mem>>20, n)
}

// FuzzFlowTableConfig: any flowTable / puPacketBudget values parse into a
// bounded configuration or a clear error, never a panic.
func FuzzFlowTableConfig(f *testing.F) {
	for _, s := range []string{"{capacity: 4096, perPU: 10%}", "{perPU: 100}", "{capacity: -1}", "{perPU: '%'}", "{capacity: [1]}", "{perPU: 1_0%}"} {
		f.Add(s, "{rate: 100, burst: 5}")
	}
	dir := f.TempDir()
	psk := filepath.Join(dir, "psk")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(psk, []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(pol, []byte("policies: []\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, table, budget string) {
		data := "node: n1\nsecrets: {pskFile: " + psk + "}\npolicy: " + pol + "\nflowTable: " + table + "\npuPacketBudget: " + budget + "\n"
		c, err := ParseConfig(filepath.Join(dir, "config.yaml"), []byte(data))
		if err != nil {
			return
		}
		fc := c.FlowTable.Flows()
		if fc.Capacity < MinFlowCapacity || fc.Capacity > MaxFlowCapacity || fc.PerPU < 1 || fc.PerPU > fc.Capacity {
			t.Fatalf("accepted %+v from %q", fc, table)
		}
	})
}
