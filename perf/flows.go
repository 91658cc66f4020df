package perf

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/perf/loadgen"
)

// FlowsConfig: how the enforcer's cost grows with the connections it
// carries. One daemon on a one-node topology and the kernel path on
// another; at each size, both get that many idle TCP connections open from
// their client PU to their server PU (the kernel path too, so that both
// stacks hold the same sockets), then the daemon's memory, its flow table,
// the kernel's authorized sets and the RTT and bulk throughput of a new
// connection are taken. After the largest size the daemon is restarted
// with every connection open.
type FlowsConfig struct {
	Sizes    []int         // open connections, e.g. 1000, 10000, 100000
	Rounds   int           // interleaved RTT/bulk rounds per size; default 3
	Duration time.Duration // per figure and round; default 1 s
	// Calibration elements for the kernel memory of a set element
	// (calibrateSet); 0: four per connection of the largest size, at
	// least 50,000.
	CalibrationElements int
	Variant             *Daemon
	Progress            func(string)
}

// FlowsRow is the state with Flows connections open.
type FlowsRow struct {
	Flows int `json:"flows"` // open connections through each path
	// OpenSeconds is how long the enforcer path took to open this size's
	// new connections (several at a time).
	OpenSeconds Value `json:"openSeconds"`
	// DaemonFlows is the enforcer's flow table fill (a connection between
	// two PUs of the node is a flow of each).
	DaemonFlows int `json:"daemonFlows"`
	// SetElements is the elements of the node's authorized sets.
	SetElements int `json:"setElements"`
	// RSSMiB is the daemon's resident memory; BytesPerFlow its growth
	// since before the first connection, per open connection.
	RSSMiB       Value `json:"daemonRssMiB"`
	BytesPerFlow Value `json:"daemonBytesPerFlow"`
	// SetMiB is the kernel memory of the authorized sets: SetElements ×
	// the calibrated bytes per element.
	SetMiB Value    `json:"kernelSetMiB"`
	Path   PathCost `json:"path"`
}

// FlowsResult is the outcome of a flows run.
type FlowsResult struct {
	Machine  Machine   `json:"machine"`
	Started  time.Time `json:"started"`
	Elapsed  string    `json:"elapsed"`
	Rounds   int       `json:"pathRounds"`
	Duration string    `json:"pathDuration"`
	// BaseRSSMiB is the daemon's RSS before any connection was held.
	BaseRSSMiB  Value          `json:"daemonBaseRssMiB"`
	Calibration SetCalibration `json:"setCalibration"`
	Rows        []FlowsRow     `json:"rows"`
	// The restart with the largest size open: from the new process's
	// start until its control API answered (flows restored from the
	// kernel's sets); the flows its table then holds; a round trip on
	// every held connection afterwards.
	RestartFlows int   `json:"restartFlows"`
	RestartMs    Value `json:"restartMs"`
	FlowsAfter   int   `json:"flowsAfter"`
	HeldOK       int   `json:"heldOKAfter"`
	HeldFailed   int   `json:"heldFailedAfter"`
	// RSSAfterMiB is the restarted daemon's RSS.
	RSSAfterMiB Value    `json:"daemonRssAfterMiB"`
	Notes       []string `json:"notes,omitempty"`
}

// perServerPort is the most connections held to one server port: a client
// address has ~64,000 ephemeral ports per destination.
const perServerPort = 40000

// RunFlows measures the cost of concurrent established connections.
// Whatever it set up is torn down before it returns.
func RunFlows(ctx context.Context, cfg FlowsConfig) (res *FlowsResult, err error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Second
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string) {}
	}
	if len(cfg.Sizes) == 0 || cfg.Variant == nil {
		return nil, errors.New("perf: flows: no sizes or no daemon")
	}
	sizes := slices.Clone(cfg.Sizes)
	slices.Sort(sizes)
	largest := sizes[len(sizes)-1]
	if sizes[0] < 1 || largest > 1_000_000 {
		return nil, errors.New("perf: flows: sizes from 1 to 1,000,000 connections")
	}
	if cfg.CalibrationElements <= 0 {
		cfg.CalibrationElements = max(4*largest, 50000)
	}
	res = &FlowsResult{Machine: ThisMachine(), Started: time.Now(), Rounds: cfg.Rounds, Duration: cfg.Duration.String()}
	if err := CleanStale(); err != nil {
		cfg.Progress(fmt.Sprintf("warning: %v", err))
	}
	cfg.Progress(fmt.Sprintf("kernel memory of a set element: %d elements", cfg.CalibrationElements))
	if res.Calibration, err = calibrateSet(cfg.CalibrationElements, 3); err != nil {
		return nil, err
	}
	// Every connection is a flow of the client PU and of the server PU:
	// room for all of them, whichever PU holds them.
	if cfg.Variant.Extra == nil {
		cfg.Variant.Extra = map[string]any{"flowTable": map[string]any{
			"capacity": max(65536, 2*largest+65536), "perPU": "100%"}}
	}
	var setups []*setup
	defer func() {
		for _, s := range setups {
			if cerr := s.close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	base := Config{Topology: OneNode}
	base.defaults()
	for _, v := range []Variant{Kernel{}, cfg.Variant} {
		cfg.Progress(fmt.Sprintf("setting up %s", v.Name()))
		s, err := newSetup(ctx, base, v)
		if s != nil {
			setups = append(setups, s)
		}
		if err != nil {
			return nil, fmt.Errorf("perf: set up %s: %w", v.Name(), err)
		}
	}
	kernel, enf := setups[0], setups[1]
	pid := cfg.Variant.EnforcerPIDs()[0]
	if p, err := loadgen.ReadProc(pid); err == nil {
		res.BaseRSSMiB = Value(float64(p.RSS) / (1 << 20))
	} else {
		return nil, err
	}
	holders := make([]*holder, len(setups))
	for i, s := range setups {
		holders[i] = &holder{s: s}
		defer holders[i].close()
	}
	for _, n := range sizes {
		row := FlowsRow{Flows: n, RSSMiB: Value(math.NaN()), BytesPerFlow: Value(math.NaN()), SetMiB: Value(math.NaN())}
		for i, h := range holders {
			cfg.Progress(fmt.Sprintf("%s: opening connections %d to %d", h.s.v.Name(), h.len()+1, n))
			start := time.Now()
			if err := h.fill(ctx, n); err != nil {
				return nil, fmt.Errorf("perf: %s: hold %d connections: %w", h.s.v.Name(), n, err)
			}
			if i == 1 {
				row.OpenSeconds = Value(time.Since(start).Seconds())
			}
		}
		if p, err := loadgen.ReadProc(pid); err == nil {
			row.RSSMiB = Value(float64(p.RSS) / (1 << 20))
			row.BytesPerFlow = Value((float64(row.RSSMiB) - float64(res.BaseRSSMiB)) * (1 << 20) / float64(n))
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%d flows: daemon: %v", n, err))
		}
		if st, err := cfg.Variant.Client(0).Stats(); err == nil {
			row.DaemonFlows = st.Flows
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%d flows: stats: %v", n, err))
		}
		cfg.Progress(fmt.Sprintf("%d flows: counting the authorized sets", n))
		if c, err := countNft(enf.topo.Nodes[0].Netns, true); err == nil {
			row.SetElements = c.AuthElements
			row.SetMiB = Value(float64(c.AuthElements) * float64(res.Calibration.BytesPerElement) / (1 << 20))
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%d flows: %v", n, err))
		}
		var notes []string
		row.Path, notes = comparePaths(ctx, kernel, enf, cfg.Rounds, cfg.Duration, fmt.Sprintf("%d flows", n), cfg.Progress)
		res.Notes = append(res.Notes, notes...)
		res.Rows = append(res.Rows, row)
	}

	cfg.Progress(fmt.Sprintf("restarting the daemon with %d connections open", largest))
	res.RestartFlows = largest
	res.RestartMs, res.RSSAfterMiB = Value(math.NaN()), Value(math.NaN())
	if d, err := cfg.Variant.restart(ctx, 0, len(enf.topo.PUs()), nil); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("restart: %v", err))
	} else {
		res.RestartMs = Value(ms(d))
		if st, err := cfg.Variant.Client(0).Stats(); err == nil {
			res.FlowsAfter = st.Flows
		}
		if p, err := loadgen.ReadProc(cfg.Variant.EnforcerPIDs()[0]); err == nil {
			res.RSSAfterMiB = Value(float64(p.RSS) / (1 << 20))
		}
		cfg.Progress(fmt.Sprintf("a round trip on each of the %d connections", largest))
		var err error
		if res.HeldOK, res.HeldFailed, err = holders[1].check(); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("held connections after the restart: %v", err))
		}
	}
	res.Elapsed = time.Since(res.Started).Round(time.Millisecond).String()
	return res, nil
}

// holder keeps idle connections open through one setup, spread over as
// many servers (ports of its server PU) as perServerPort needs. Both ends
// of every connection are parked (loadgen.Parking): 100,000 connections
// through each of two paths are 400,000 sockets, more than a process may
// have open where the hard RLIMIT_NOFILE cannot be raised.
type holder struct {
	s       *setup
	clients []*loadgen.Client // toward the extra servers, in order
	servers []*loadgen.Server
	// Client and server ends of the held connections.
	cliPark, srvPark *loadgen.Parking
	n                int
}

func (h *holder) len() int { return h.n }

// holdWorkers is how many connections are opened at once.
const holdWorkers = 8

// fill opens connections until n are open.
func (h *holder) fill(ctx context.Context, n int) error {
	if h.cliPark == nil {
		var err error
		if h.cliPark, err = loadgen.NewParking(); err != nil {
			return err
		}
		if h.srvPark, err = loadgen.NewParking(); err != nil {
			return err
		}
	}
	for len(h.servers)*perServerPort < n {
		// The extra servers listen beside the measuring one (DefaultPort,
		// and the next port for iperf3).
		port := h.s.server.Addr().Port() + 2 + uint16(len(h.servers))
		srv, cli, err := h.listen(netip.AddrPortFrom(h.s.topo.Server.Addr, port))
		if err != nil {
			return err
		}
		h.servers, h.clients = append(h.servers, srv), append(h.clients, cli)
	}
	// Jobs of contiguous connection numbers, each toward one server.
	type job struct{ client, count int }
	var jobs []job
	const chunk = 1000 // connections of a job: holdWorkers*chunk files open at most
	for i := h.n; i < n; {
		c := i / perServerPort
		end := min(n, (c+1)*perServerPort, i+chunk)
		jobs = append(jobs, job{c, end - i})
		i = end
	}
	var (
		mu    sync.Mutex
		errs  []error
		wg    sync.WaitGroup
		queue = make(chan job)
	)
	for range min(holdWorkers, len(jobs)) {
		wg.Go(func() {
			for j := range queue {
				held, err := h.clients[j.client].Hold(ctx, j.count)
				if err == nil {
					if err = held.Park(h.cliPark); err != nil {
						held.Close()
					}
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					h.n += j.count
				}
				mu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		queue <- j
	}
	close(queue)
	wg.Wait()
	if err := h.srvPark.Flush(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// listen starts an extra server of the setup's server PU and a client
// toward it.
func (h *holder) listen(addr netip.AddrPort) (*loadgen.Server, *loadgen.Client, error) {
	srvNs, err := netsetup.OpenNetnsPath(h.s.topo.Server.Netns)
	if err != nil {
		return nil, nil, err
	}
	defer srvNs.Close()
	srv, err := loadgen.Listen(srvNs, addr)
	if err != nil {
		return nil, nil, err
	}
	srv.ParkPings(h.srvPark)
	cli, err := h.s.client.To(srv.Addr())
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	return srv, cli, nil
}

// check sends a byte on every held connection and waits for its
// acknowledgement (loadgen.CheckParked).
func (h *holder) check() (ok, failed int, err error) {
	if h.cliPark == nil {
		return 0, 0, nil
	}
	return loadgen.CheckParked(h.cliPark, loadgen.DefaultTimeout)
}

func (h *holder) close() {
	for _, p := range []*loadgen.Parking{h.cliPark, h.srvPark} {
		if p != nil {
			p.Close()
		}
	}
	for _, s := range h.servers {
		s.Close()
	}
	h.servers = nil
}
