package perf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/perf/loadgen"
)

// SoakConfig: an endurance run. One daemon on a one-node topology; the
// client PU keeps Allowed closed-loop clients making connections the
// policy allows to the server PU, Denied clients making connections it
// refuses (to another port of the server), and Held idle connections open,
// each checked with a round trip every Interval. Every Interval the
// daemon's figures are sampled into a row; after the load, a last row once
// the flows have drained.
type SoakConfig struct {
	Duration time.Duration
	Interval time.Duration // default 1 minute
	Allowed  int           // default 6
	Denied   int           // default 2
	Held     int           // default 1000
	// Drain bounds the wait for the flows to drain after the load;
	// default 90 s.
	Drain    time.Duration
	Variant  *Daemon
	Progress func(string)
}

// Soak ports on the server: allowed, refused by the policy.
const (
	soakAllowedPort = 5201
	soakDeniedPort  = 5301
)

// SoakPolicy lets the soak client reach the server on soakAllowedPort
// only.
var SoakPolicy = fmt.Sprintf(`policies:
  - name: perf-server
    selector: app=perf-server
    ingress:
      - name: from-perf-client
        from:
          - selector: app=perf-client
        ports: [tcp/%d]
        action: allow
  - name: perf-client
    selector: app=perf-client
    egress:
      - name: to-perf-server
        to:
          - selector: app=perf-server
        action: allow
`, soakAllowedPort)

// SoakRow is one interval of a soak (or the drain after it).
type SoakRow struct {
	Label   string  `json:"label"`    // "1", "2", ... (interval), "after"
	Elapsed float64 `json:"elapsedS"` // since the load started
	// Load of the interval.
	AllowedPerSec   Value  `json:"allowedPerSec"`
	AllowedFailed   uint64 `json:"allowedFailed"`   // allowed connections that failed
	DeniedPerSec    Value  `json:"deniedPerSec"`    // refused as they should be
	DeniedConnected uint64 `json:"deniedConnected"` // denied connections that got through (must be 0)
	HeldOK          int    `json:"heldOK"`
	HeldFailed      int    `json:"heldFailed"`
	FirstError      string `json:"firstError,omitempty"`
	// The daemon at the end of the interval.
	RSSMiB         Value  `json:"rssMiB"`
	Goroutines     int    `json:"goroutines"`
	FDs            int    `json:"fds"`
	Flows          int    `json:"flows"`
	TableFull      uint64 `json:"tableFullDrops"` // since the start
	RecordsLost    uint64 `json:"recordsLost"`    // records-dropped, since the start
	RecordsWritten uint64 `json:"recordsWritten"`
	FlowLogMiB     Value  `json:"flowLogMiB"` // on disk, rotated files included
}

// SoakResult is the outcome of a soak.
type SoakResult struct {
	Machine  Machine   `json:"machine"`
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	Interval string    `json:"interval"`
	Allowed  int       `json:"allowedClients"`
	Denied   int       `json:"deniedClients"`
	Held     int       `json:"held"`
	Rows     []SoakRow `json:"rows"`
	// Totals over the load.
	AllowedConns    uint64   `json:"allowedConns"`
	AllowedFailed   uint64   `json:"allowedFailed"`
	DeniedConns     uint64   `json:"deniedRefused"`
	DeniedConnected uint64   `json:"deniedConnected"`
	HeldFailed      int      `json:"heldFailed"`
	Notes           []string `json:"notes,omitempty"`
}

// RunSoak runs an endurance scenario. Whatever it set up is torn down
// before it returns.
func RunSoak(ctx context.Context, cfg SoakConfig) (res *SoakResult, err error) {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Allowed <= 0 {
		cfg.Allowed = 6
	}
	if cfg.Denied < 0 {
		cfg.Denied = 0
	}
	if cfg.Held < 0 {
		cfg.Held = 0
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 90 * time.Second
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string) {}
	}
	if cfg.Duration <= 0 || cfg.Variant == nil {
		return nil, errors.New("perf: soak: no duration or no daemon")
	}
	res = &SoakResult{Machine: ThisMachine(), Started: time.Now(), Duration: cfg.Duration.String(), Interval: cfg.Interval.String(),
		Allowed: cfg.Allowed, Denied: cfg.Denied, Held: cfg.Held}
	if err := CleanStale(); err != nil {
		cfg.Progress(fmt.Sprintf("warning: %v", err))
	}
	topo, err := NewTopology(OneNode, "soak")
	if err != nil {
		return nil, err
	}
	s := &setup{v: cfg.Variant, topo: topo}
	defer func() {
		if cerr := s.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if cfg.Variant.Policy == "" {
		cfg.Variant.Policy = SoakPolicy
	}
	cfg.Progress("starting the daemon")
	if err := cfg.Variant.Setup(ctx, topo); err != nil {
		return nil, err
	}
	srvNs, err := netsetup.OpenNetnsPath(topo.Server.Netns)
	if err != nil {
		return nil, err
	}
	s.ns = append(s.ns, func() { srvNs.Close() })
	cliNs, err := netsetup.OpenNetnsPath(topo.Client.Netns)
	if err != nil {
		return nil, err
	}
	s.ns = append(s.ns, func() { cliNs.Close() })
	if s.server, err = loadgen.Listen(srvNs, netip.AddrPortFrom(topo.Server.Addr, soakAllowedPort)); err != nil {
		return nil, err
	}
	// A server on the denied port too: a connection the enforcer let
	// through would be answered, and counted.
	deniedSrv, err := loadgen.Listen(srvNs, netip.AddrPortFrom(topo.Server.Addr, soakDeniedPort))
	if err != nil {
		return nil, err
	}
	defer deniedSrv.Close()
	allowed, err := loadgen.NewClient(cliNs, s.server.Addr())
	if err != nil {
		return nil, err
	}
	s.client = allowed
	denied, err := allowed.To(deniedSrv.Addr())
	if err != nil {
		return nil, err
	}
	if err := allowed.Probe(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	var held *loadgen.Held
	if cfg.Held > 0 {
		cfg.Progress(fmt.Sprintf("opening %d held connections", cfg.Held))
		if held, err = allowed.Hold(ctx, cfg.Held); err != nil {
			return nil, err
		}
		defer held.Close()
	}
	pid := cfg.Variant.EnforcerPIDs()[0]
	client := cfg.Variant.Client(0)
	flowLog := cfg.Variant.FlowLog(0)

	start := time.Now()
	intervals := int(math.Ceil(float64(cfg.Duration) / float64(cfg.Interval)))
	for i := range intervals {
		d := min(cfg.Interval, cfg.Duration-time.Duration(i)*cfg.Interval)
		cfg.Progress(fmt.Sprintf("soak: interval %d/%d", i+1, intervals))
		var wg sync.WaitGroup
		var ar, dr loadgen.ConnRate
		var aerr, derr error
		wg.Go(func() { ar, aerr = allowed.ConnRate(ctx, cfg.Allowed, d, false) })
		if cfg.Denied > 0 {
			wg.Go(func() { dr, derr = denied.ConnRate(ctx, cfg.Denied, d, false) })
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if aerr != nil || derr != nil {
			return nil, errors.Join(aerr, derr)
		}
		row := SoakRow{Label: strconv.Itoa(i + 1), AllowedPerSec: Value(ar.PerSecond()), AllowedFailed: ar.Failed,
			DeniedPerSec: Value(float64(dr.Failed) / max(dr.Elapsed.Seconds(), 1e-9)), DeniedConnected: dr.Conns}
		if ar.FirstErr != nil {
			row.FirstError = ar.FirstErr.Error()
		}
		if held != nil {
			row.HeldOK, row.HeldFailed = held.Check(loadgen.DefaultTimeout)
		}
		row.Elapsed = time.Since(start).Seconds()
		if err := sampleDaemon(&row, pid, client, flowLog); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("interval %d: %v", i+1, err))
		}
		res.Rows = append(res.Rows, row)
		res.AllowedConns += ar.Conns
		res.AllowedFailed += ar.Failed
		res.DeniedConns += dr.Failed
		res.DeniedConnected += dr.Conns
		res.HeldFailed += row.HeldFailed
	}
	// The load stops: flows end (a burst of records), the table drains.
	cfg.Progress("soak: draining")
	end := time.Now()
	row := SoakRow{Label: "after"}
	for time.Since(end) < cfg.Drain {
		time.Sleep(2 * time.Second)
		if err := sampleDaemon(&row, pid, client, flowLog); err != nil {
			break
		}
		if row.Flows <= cfg.Held*2+16 && time.Since(end) > 40*time.Second {
			break
		}
	}
	if held != nil {
		row.HeldOK, row.HeldFailed = held.Check(loadgen.DefaultTimeout)
		res.HeldFailed += row.HeldFailed
	}
	row.Elapsed = time.Since(start).Seconds()
	if err := sampleDaemon(&row, pid, client, flowLog); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("after: %v", err))
	}
	res.Rows = append(res.Rows, row)
	return res, nil
}

// sampleDaemon fills the daemon's figures of a row.
func sampleDaemon(row *SoakRow, pid int, c *node.Client, flowLog string) error {
	p, err := loadgen.ReadProc(pid)
	if err != nil {
		return err
	}
	row.RSSMiB = Value(float64(p.RSS) / (1 << 20))
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		row.FDs = len(ents)
	}
	st, err := c.Stats()
	if err != nil {
		return err
	}
	row.Flows = st.Flows
	row.TableFull = st.Drops["table-full"]
	row.RecordsLost = st.Counters["records-dropped"]
	row.RecordsWritten = st.Counters["records-written"]
	if m, err := c.Metrics(); err == nil {
		row.Goroutines = int(metricValue(m, "go_goroutines"))
	}
	var bytes int64
	for _, f := range node.FlowLogFiles(flowLog) {
		if fi, err := os.Stat(f); err == nil {
			bytes += fi.Size()
		}
	}
	row.FlowLogMiB = Value(float64(bytes) / (1 << 20))
	return nil
}

// metricValue returns the value of an unlabelled metric in Prometheus text
// format (NaN if absent).
func metricValue(text, name string) float64 {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return math.NaN()
}

// FlowLog is the flow log path of the daemon of node i.
func (d *Daemon) FlowLog(i int) string {
	return d.daemons[i].Config.FlowLog
}
