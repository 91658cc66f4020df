package node

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/netsetup/steer"
)

// FlowTable sizes the enforcer's flow table (docs/daemon.md).
type FlowTable struct {
	// Capacity is the most flows the node tracks (all PUs); 0: from the
	// machine's memory (DefaultFlowCapacity).
	Capacity Count `yaml:"capacity"`
	// PerPU is the most flows one PU may hold: a number, or a percentage
	// of Capacity ("25%", the default). A PU at its share evicts its own
	// closed, denied or half-open flows, or has its new flows refused
	// (flow-quota); other PUs are not affected.
	PerPU Share `yaml:"perPU"`
}

// PacketBudget bounds how many packets a second one PU can make the
// daemon process (the kernel drops the rest before they reach it, counted
// as pu-packet-budget): per PU, a bucket of Rate for each kind of packet
// the steering rules send to the daemon: TCP SYN/FIN/RST, IPv4 fragments,
// IPv6 fragments, and the rest (first packets of datagram flows,
// handshake ACKs). Packets of authorized flows
// and packets toward a PU cost no budget (docs/steering.md).
type PacketBudget struct {
	// Rate is packets a second per bucket (default 20000; 0: no budget).
	Rate Count `yaml:"rate"`
	// Burst is how many packets above the rate pass at once (default:
	// Rate).
	Burst Count `yaml:"burst"`
}

// DefaultPacketBudget is a PU's default budget: above what one PU's
// legitimate load needs on a node whose daemon handles a few thousand new
// connections a second (two or three SYN/FIN/RST per connection and PU),
// low enough that one PU's flood leaves the daemon to the others.
const DefaultPacketBudget = 20000

func (b *PacketBudget) applyDefaults() {
	if !b.Rate.set {
		b.Rate = Count{N: DefaultPacketBudget, valid: true}
	}
	if !b.Burst.set {
		b.Burst = Count{N: b.Rate.N, valid: true}
	}
}

func (b *PacketBudget) validate(path string, bad func(string)) {
	for _, f := range []struct {
		name string
		c    Count
	}{{"rate", b.Rate}, {"burst", b.Burst}} {
		if !f.c.valid || f.c.N > 10_000_000 {
			bad(fmt.Sprintf("%s: puPacketBudget.%s: want a number of packets between 0 and 10000000", at(path, f.c.line, f.c.col), f.name))
		}
	}
}

// Budget returns the budget for the steering rules.
func (b *PacketBudget) Budget() steer.Budget {
	return steer.Budget{Rate: uint32(b.Rate.N), Burst: uint32(b.Burst.N)}
}

func at(path string, line, col int) string {
	if line == 0 {
		return path
	}
	return fmt.Sprintf("%s:%d:%d", path, line, col)
}

// Bounds of the flow table's size.
const (
	MinFlowCapacity = 1024
	MaxFlowCapacity = 16 << 20
	// bytesPerFlow is what one flow costs the daemon: a 384-byte entry and
	// its slot in its PU's map.
	bytesPerFlow = 460
	// flowMemoryShare: by default the table may take 1/128 of the memory
	// the daemon can use.
	flowMemoryShare = 128
	// DefaultPerPUPercent is a PU's default share of the table.
	DefaultPerPUPercent = 25
)

// Count is a non-negative number read from YAML, remembering where it was
// written so that a bad value is reported with its line.
type Count struct {
	N          int
	line, col  int
	set, valid bool
}

// UnmarshalYAML reads an integer.
func (c *Count) UnmarshalYAML(n *yaml.Node) error {
	c.line, c.col, c.set = n.Line, n.Column, true
	v, err := strconv.Atoi(strings.ReplaceAll(n.Value, "_", ""))
	c.N, c.valid = v, n.Kind == yaml.ScalarNode && err == nil && v >= 0
	return nil
}

// Share is a number of flows or a percentage of the capacity.
type Share struct {
	N, Percent int
	line, col  int
	set, valid bool
}

// UnmarshalYAML reads "12000" or "25%".
func (s *Share) UnmarshalYAML(n *yaml.Node) error {
	s.line, s.col, s.set = n.Line, n.Column, true
	v := strings.ReplaceAll(n.Value, "_", "")
	pct, isPct := strings.CutSuffix(v, "%")
	x, err := strconv.Atoi(strings.TrimSpace(pct))
	s.valid = n.Kind == yaml.ScalarNode && err == nil && x > 0
	if isPct {
		s.Percent = x
		s.valid = s.valid && x <= 100
	} else {
		s.N = x
	}
	return nil
}

// Of returns the share of a table of the given capacity.
func (s Share) Of(capacity int) int {
	if s.Percent > 0 {
		return max(capacity*s.Percent/100, 1)
	}
	return s.N
}

func (f *FlowTable) applyDefaults() {
	if f.Capacity.N == 0 && !f.Capacity.set {
		f.Capacity.N, f.Capacity.valid = DefaultFlowCapacity(), true
	}
	if !f.PerPU.set {
		f.PerPU = Share{Percent: DefaultPerPUPercent, valid: true}
	}
}

// validate reports bad values as file:line:column: field: problem.
func (f *FlowTable) validate(path string, bad func(string)) {
	c := f.Capacity
	if !c.valid || c.N < MinFlowCapacity || c.N > MaxFlowCapacity {
		bad(fmt.Sprintf("%s: flowTable.capacity: want a number of flows between %d and %d", at(path, c.line, c.col), MinFlowCapacity, MaxFlowCapacity))
		return
	}
	s := f.PerPU
	switch {
	case !s.valid:
		bad(fmt.Sprintf("%s: flowTable.perPU: want a number of flows or a percentage of the capacity (1%%-100%%)", at(path, s.line, s.col)))
	case s.Percent == 0 && (s.N < 16 || s.N > c.N):
		bad(fmt.Sprintf("%s: flowTable.perPU: %d: want between 16 and the capacity (%d)", at(path, s.line, s.col), s.N, c.N))
	}
}

// Flows returns the flow table's configuration for the enforcer.
func (f *FlowTable) Flows() flow.Config {
	return flow.Config{Capacity: f.Capacity.N, PerPU: f.PerPU.Of(f.Capacity.N)}
}

// DefaultFlowCapacity is the flow table's size when the configuration does
// not set one: 1/128 of the memory the daemon may use (the machine's, or
// its cgroup's limit if lower) at ~460 bytes a flow, at least 65536 flows
// (30 MB), at most MaxFlowCapacity.
func DefaultFlowCapacity() int {
	mem := machineMemory()
	if mem == 0 {
		return flow.DefaultCapacity
	}
	n := mem / flowMemoryShare / bytesPerFlow
	return int(min(max(n, flow.DefaultCapacity), MaxFlowCapacity))
}

// machineMemory is the memory the daemon may use, in bytes: MemTotal, or
// its cgroup v2 limit when lower (0 when unknown).
func machineMemory() uint64 {
	var total uint64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if kb, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				v, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
				if err == nil {
					total = v * 1024
				}
				break
			}
		}
	}
	if limit := cgroupMemoryLimit(); limit > 0 && (total == 0 || limit < total) {
		total = limit
	}
	return total
}

// cgroupMemoryLimit reads the daemon's cgroup v2 memory.max (0: none).
func cgroupMemoryLimit() uint64 {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			m, err := os.ReadFile("/sys/fs/cgroup" + strings.TrimSpace(rest) + "/memory.max")
			if err != nil {
				return 0
			}
			v, err := strconv.ParseUint(strings.TrimSpace(string(m)), 10, 64)
			if err != nil {
				return 0 // "max"
			}
			return v
		}
	}
	return 0
}
