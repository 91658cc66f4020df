// Package perf measures what trireme costs against the plain kernel path, in
// the same run: each Variant (kernel, enforcer PSK, enforcer PKI, ...) gets
// its own copy of a topology of network namespaces, and the rounds are
// interleaved (A B C A B C ...) so that drift on a noisy machine hits every
// variant alike. Each figure is reported as its median and range over the
// rounds and as the median of the per-round ratios to the kernel path.
package perf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/perf/loadgen"
)

// Config says what to measure.
type Config struct {
	Topology TopologyKind
	Variants []Variant // the one named "kernel" is the baseline of the ratios
	Rounds   int
	Duration time.Duration // per figure and round
	Clients  int           // concurrent clients of the "N clients" figure
	Streams  int           // streams of the multi-stream bulk figure
	Port     uint16        // server port (iperf3 uses the next one)
	// NoTimeWaitReuse keeps the client from reusing ports in TIME_WAIT
	// (tcp_tw_reuse=0): no 5-tuple then recurs within a minute, and long or
	// fast runs may run out of ports.
	NoTimeWaitReuse bool
	// ProfileDir, if set, gets a Linux `perf record -g` profile of the
	// enforcer processes during an extra, unmeasured pair of
	// connection-rate runs after the rounds (the profiler's own cost stays
	// out of the figures): DIR/VARIANT.perf.data, for `perf report -i`.
	ProfileDir string
	// Iperf3 is the iperf3 binary for a cross-check of the 1-stream bulk
	// figure; "" leaves it out.
	Iperf3 string
	// ConnectionsOnly measures only the TCP new-connection figures
	// (connection rates, connect and first-response latency, the
	// enforcer's CPU and peak RSS): what a policy change can move.
	ConnectionsOnly bool
	// Progress, if set, is told what is being measured.
	Progress func(msg string)
}

// Defaults of Config.
const (
	DefaultRounds   = 5
	DefaultDuration = 3 * time.Second
	DefaultClients  = 8
	DefaultStreams  = 4
	DefaultPort     = 5201
	BaselineName    = "kernel"
)

func (c *Config) defaults() {
	if c.Topology == "" {
		c.Topology = OneNode
	}
	if c.Rounds <= 0 {
		c.Rounds = DefaultRounds
	}
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.Clients <= 0 {
		c.Clients = DefaultClients
	}
	if c.Streams <= 0 {
		c.Streams = DefaultStreams
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Progress == nil {
		c.Progress = func(string) {}
	}
}

// FigureKey identifies a figure.
type FigureKey string

const (
	ConnRate1    FigureKey = "conn_rate_1"
	ConnRateN    FigureKey = "conn_rate_n"
	ConnectP50   FigureKey = "connect_p50_us"
	ConnectP90   FigureKey = "connect_p90_us"
	ConnectP99   FigureKey = "connect_p99_us"
	FirstByteP50 FigureKey = "first_byte_p50_us"
	FirstByteP90 FigureKey = "first_byte_p90_us"
	FirstByteP99 FigureKey = "first_byte_p99_us"
	Bulk1        FigureKey = "bulk_1_gbps"
	BulkN        FigureKey = "bulk_n_gbps"
	RTTP50       FigureKey = "rtt_p50_us"
	CPUPer1k     FigureKey = "cpu_s_per_1k_conns"
	PeakRSS      FigureKey = "peak_rss_mib"
	Iperf3Bulk1  FigureKey = "iperf3_bulk_1_gbps"

	UDPFlows1   FigureKey = "udp_flows_1"
	UDPFlowsN   FigureKey = "udp_flows_n"
	UDPFirstP50 FigureKey = "udp_first_response_p50_us"
	UDPFirstP99 FigureKey = "udp_first_response_p99_us"
	UDPBulk1    FigureKey = "udp_bulk_1_gbps"
	UDPRTTP50   FigureKey = "udp_rtt_p50_us"
)

// FigureInfo describes a figure for people.
type FigureInfo struct {
	Key    FigureKey `json:"key"`
	Label  string    `json:"label"`
	Unit   string    `json:"unit"`
	Higher bool      `json:"higherIsBetter"`
	// Delta: also report the per-round difference to the baseline (the
	// added latency).
	Delta bool `json:"delta,omitempty"`
	// Enforcer: only variants with an enforcer process have it.
	Enforcer bool `json:"enforcer,omitempty"`
}

func figureInfos(c *Config) []FigureInfo {
	fs := []FigureInfo{
		{Key: ConnRate1, Label: "new conns/s, 1 client", Unit: "conn/s", Higher: true},
		{Key: ConnRateN, Label: fmt.Sprintf("new conns/s, %d clients", c.Clients), Unit: "conn/s", Higher: true},
		{Key: ConnectP50, Label: "connect p50", Unit: "µs", Delta: true},
		{Key: ConnectP90, Label: "connect p90", Unit: "µs", Delta: true},
		{Key: ConnectP99, Label: "connect p99", Unit: "µs", Delta: true},
		{Key: FirstByteP50, Label: "first response p50", Unit: "µs", Delta: true},
		{Key: FirstByteP90, Label: "first response p90", Unit: "µs", Delta: true},
		{Key: FirstByteP99, Label: "first response p99", Unit: "µs", Delta: true},
		{Key: Bulk1, Label: "bulk, 1 stream", Unit: "Gbit/s", Higher: true},
		{Key: BulkN, Label: fmt.Sprintf("bulk, %d streams", c.Streams), Unit: "Gbit/s", Higher: true},
		{Key: RTTP50, Label: "RTT (median)", Unit: "µs", Delta: true},
		{Key: CPUPer1k, Label: "enforcer CPU per 1k conns", Unit: "s", Enforcer: true},
		{Key: PeakRSS, Label: "enforcer peak RSS", Unit: "MiB", Enforcer: true},
	}
	if c.ConnectionsOnly {
		return slices.DeleteFunc(fs, func(f FigureInfo) bool { return !connectionFigure(f.Key) })
	}
	fs = append(fs,
		FigureInfo{Key: UDPFlows1, Label: "new UDP flows/s, 1 client", Unit: "flow/s", Higher: true},
		FigureInfo{Key: UDPFlowsN, Label: fmt.Sprintf("new UDP flows/s, %d clients", c.Clients), Unit: "flow/s", Higher: true},
		FigureInfo{Key: UDPFirstP50, Label: "UDP first response p50", Unit: "µs", Delta: true},
		FigureInfo{Key: UDPFirstP99, Label: "UDP first response p99", Unit: "µs", Delta: true},
		FigureInfo{Key: UDPBulk1, Label: "UDP bulk, 1 flow", Unit: "Gbit/s", Higher: true},
		FigureInfo{Key: UDPRTTP50, Label: "UDP RTT (median)", Unit: "µs", Delta: true},
	)
	if c.Iperf3 != "" {
		fs = append(fs, FigureInfo{Key: Iperf3Bulk1, Label: "iperf3 bulk, 1 stream", Unit: "Gbit/s", Higher: true})
	}
	return fs
}

// connectionFigure tells the figures of a ConnectionsOnly run.
func connectionFigure(k FigureKey) bool {
	switch k {
	case ConnRate1, ConnRateN, ConnectP50, ConnectP90, ConnectP99, FirstByteP50, FirstByteP90, FirstByteP99, CPUPer1k, PeakRSS:
		return true
	}
	return false
}

// Machine describes where a run took place.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel,omitempty"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"goVersion"`
}

// ThisMachine describes the machine the process runs on.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	return m
}

// Value is a measured number; NaN (not measured) is null in JSON.
type Value float64

func (v Value) MarshalJSON() ([]byte, error) {
	f := float64(v)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return fmt.Appendf(nil, "%g", f), nil
}

func (v *Value) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*v = Value(math.NaN())
		return nil
	}
	var f float64
	if _, err := fmt.Sscan(string(b), &f); err != nil {
		return err
	}
	*v = Value(f)
	return nil
}

// VariantFigure is one figure of one variant over the rounds.
type VariantFigure struct {
	Rounds []Value   `json:"rounds"`
	Value  *Summary  `json:"value,omitempty"`
	Ratio  *Summary  `json:"ratio,omitempty"` // of per-round ratios to the baseline
	Delta  *Summary  `json:"delta,omitempty"` // of per-round differences to the baseline
	raw    []float64 // Rounds as float64
}

// FigureResult is one figure of every variant.
type FigureResult struct {
	FigureInfo
	Variants map[string]*VariantFigure `json:"variants"`
}

// RoundNote is something that went wrong in a round, kept with the result.
type RoundNote struct {
	Round   int    `json:"round"`
	Variant string `json:"variant"`
	Message string `json:"message"`
}

// Result is the outcome of a run.
type Result struct {
	Topology TopologyKind   `json:"topology"`
	Rounds   int            `json:"rounds"`
	Duration string         `json:"durationPerFigure"`
	Clients  int            `json:"clients"`
	Streams  int            `json:"streams"`
	Variants []string       `json:"variants"`
	Baseline string         `json:"baseline,omitempty"`
	Machine  Machine        `json:"machine"`
	Started  time.Time      `json:"started"`
	Elapsed  string         `json:"elapsed"`
	Figures  []FigureResult `json:"figures"`
	Notes    []RoundNote    `json:"notes,omitempty"`
}

// Figure returns the result of one figure (nil if absent).
func (r *Result) Figure(k FigureKey) *FigureResult {
	for i := range r.Figures {
		if r.Figures[i].Key == k {
			return &r.Figures[i]
		}
	}
	return nil
}

// setup is a variant with its topology and load generator.
type setup struct {
	v      Variant
	topo   *Topology
	ns     []func() // closers
	server *loadgen.Server
	udp    *loadgen.UDPServer // on the same port number
	client *loadgen.Client
}

func (s *setup) close() error {
	var errs []error
	if s.server != nil {
		s.server.Close()
	}
	if s.udp != nil {
		s.udp.Close()
	}
	for _, c := range s.ns {
		c()
	}
	if err := s.v.Teardown(); err != nil {
		errs = append(errs, fmt.Errorf("%s teardown: %w", s.v.Name(), err))
	}
	if s.topo != nil {
		if err := s.topo.Destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Run measures the variants. Whatever it set up is torn down before it
// returns, also on error or cancellation.
func Run(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg.defaults()
	if len(cfg.Variants) == 0 {
		return nil, errors.New("perf: no variants")
	}
	seen := map[string]bool{}
	for _, v := range cfg.Variants {
		if seen[v.Name()] {
			return nil, fmt.Errorf("perf: variant %s twice", v.Name())
		}
		seen[v.Name()] = true
	}
	res = &Result{
		Topology: cfg.Topology, Rounds: cfg.Rounds, Duration: cfg.Duration.String(),
		Clients: cfg.Clients, Streams: cfg.Streams, Machine: ThisMachine(), Started: time.Now(),
	}
	if seen[BaselineName] {
		res.Baseline = BaselineName
	}
	if err := CleanStale(); err != nil {
		cfg.Progress(fmt.Sprintf("warning: %v", err))
	}

	var setups []*setup
	defer func() {
		for _, s := range setups {
			if cerr := s.close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	for _, v := range cfg.Variants {
		cfg.Progress(fmt.Sprintf("setting up %s on %s", v.Name(), cfg.Topology))
		s, err := newSetup(ctx, cfg, v)
		if s != nil {
			setups = append(setups, s)
		}
		if err != nil {
			return nil, fmt.Errorf("perf: set up %s: %w", v.Name(), err)
		}
		res.Variants = append(res.Variants, v.Name())
	}

	infos := figureInfos(&cfg)
	rounds := map[string]map[FigureKey][]float64{}
	for _, s := range setups {
		m := map[FigureKey][]float64{}
		for _, fi := range infos {
			m[fi.Key] = nanSlice(cfg.Rounds)
		}
		rounds[s.v.Name()] = m
	}
	for r := range cfg.Rounds {
		for _, s := range setups {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			prog := func(what string) {
				cfg.Progress(fmt.Sprintf("round %d/%d  %-8s %s", r+1, cfg.Rounds, s.v.Name(), what))
			}
			notes := measureRound(ctx, cfg, s, r, rounds[s.v.Name()], prog)
			for _, n := range notes {
				res.Notes = append(res.Notes, RoundNote{Round: r + 1, Variant: s.v.Name(), Message: n})
			}
		}
	}
	if cfg.ProfileDir != "" {
		for _, s := range setups {
			if err := profileSetup(ctx, cfg, s); err != nil {
				res.Notes = append(res.Notes, RoundNote{Round: cfg.Rounds + 1, Variant: s.v.Name(), Message: err.Error()})
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.Figures = summarizeFigures(infos, res.Variants, res.Baseline, rounds)
	res.Elapsed = time.Since(res.Started).Round(time.Millisecond).String()
	return res, nil
}

func nanSlice(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return s
}

func newSetup(ctx context.Context, cfg Config, v Variant) (*setup, error) {
	topo, err := NewTopology(cfg.Topology, v.Name())
	if err != nil {
		return nil, err
	}
	s := &setup{v: v, topo: topo}
	if cfg.NoTimeWaitReuse {
		if err := sysctlsIn(topo.Client.Netns, map[string]string{"net/ipv4/tcp_tw_reuse": "0"}); err != nil {
			return s, err
		}
	}
	if err := v.Setup(ctx, topo); err != nil {
		return s, err
	}
	for _, p := range topo.PUs() {
		if !p.Addr.IsValid() {
			return s, fmt.Errorf("%s has no address after setup", p.Name)
		}
	}
	srvNs, err := netsetup.OpenNetnsPath(topo.Server.Netns)
	if err != nil {
		return s, err
	}
	s.ns = append(s.ns, func() { srvNs.Close() })
	cliNs, err := netsetup.OpenNetnsPath(topo.Client.Netns)
	if err != nil {
		return s, err
	}
	s.ns = append(s.ns, func() { cliNs.Close() })
	if s.server, err = loadgen.Listen(srvNs, netip.AddrPortFrom(topo.Server.Addr, cfg.Port)); err != nil {
		return s, err
	}
	if s.udp, err = loadgen.ListenUDP(srvNs, s.server.Addr()); err != nil {
		return s, err
	}
	if s.client, err = loadgen.NewClient(cliNs, s.server.Addr()); err != nil {
		return s, err
	}
	if err := s.client.Probe(ctx, 10*time.Second); err != nil {
		return s, err
	}
	if err := s.client.UDPProbe(ctx, 10*time.Second); err != nil {
		return s, err
	}
	return s, nil
}

// measureRound takes every figure of one variant once. A figure that fails
// stays NaN for the round and the failure becomes a note.
func measureRound(ctx context.Context, cfg Config, s *setup, r int, out map[FigureKey][]float64, prog func(string)) (notes []string) {
	d := cfg.Duration
	pids := s.v.EnforcerPIDs()
	before, perr := sampleProcs(pids)
	if perr != nil {
		notes = append(notes, perr.Error())
	}
	var conns uint64
	prog("new connections, 1 client")
	if cr, err := s.client.ConnRate(ctx, 1, d, true); err != nil {
		notes = append(notes, fmt.Sprintf("conn rate 1: %v", err))
	} else {
		conns += cr.Conns + cr.Failed
		if cr.Failed > 0 {
			notes = append(notes, fmt.Sprintf("conn rate 1: %d of %d connections failed, first: %v", cr.Failed, cr.Conns+cr.Failed, cr.FirstErr))
		}
		out[ConnRate1][r] = cr.PerSecond()
		if cr.Conns > 0 {
			c := LatenciesOf(cr.Connect)
			f := LatenciesOf(cr.FirstByte)
			out[ConnectP50][r], out[ConnectP90][r], out[ConnectP99][r] = us(c.P50), us(c.P90), us(c.P99)
			out[FirstByteP50][r], out[FirstByteP90][r], out[FirstByteP99][r] = us(f.P50), us(f.P90), us(f.P99)
		}
	}
	prog(fmt.Sprintf("new connections, %d clients", cfg.Clients))
	if cr, err := s.client.ConnRate(ctx, cfg.Clients, d, false); err != nil {
		notes = append(notes, fmt.Sprintf("conn rate %d: %v", cfg.Clients, err))
	} else {
		conns += cr.Conns + cr.Failed
		if cr.Failed > 0 {
			notes = append(notes, fmt.Sprintf("conn rate %d: %d of %d connections failed, first: %v", cfg.Clients, cr.Failed, cr.Conns+cr.Failed, cr.FirstErr))
		}
		out[ConnRateN][r] = cr.PerSecond()
	}
	if len(pids) > 0 && perr == nil {
		after, err := sampleProcs(pids)
		if err != nil {
			notes = append(notes, err.Error())
		} else if conns > 0 {
			out[CPUPer1k][r] = (after.CPU - before.CPU).Seconds() / float64(conns) * 1000
			out[PeakRSS][r] = float64(after.PeakRSS) / (1 << 20)
		}
	}
	if cfg.ConnectionsOnly {
		return notes
	}

	for _, b := range []struct {
		key     FigureKey
		streams int
	}{{Bulk1, 1}, {BulkN, cfg.Streams}} {
		prog(fmt.Sprintf("bulk, %d stream(s)", b.streams))
		br, err := s.client.Bulk(ctx, b.streams, d)
		switch {
		case err != nil:
			notes = append(notes, fmt.Sprintf("bulk %d: %v", b.streams, err))
		case br.Sent != br.Received:
			notes = append(notes, fmt.Sprintf("bulk %d: sent %d bytes, server received %d", b.streams, br.Sent, br.Received))
		default:
			out[b.key][r] = br.Gbps()
		}
	}

	if cfg.Iperf3 != "" {
		prog("iperf3, 1 stream")
		if g, err := iperf3Bulk(ctx, cfg.Iperf3, s.topo, cfg.Port+1, d); err != nil {
			notes = append(notes, err.Error())
		} else {
			out[Iperf3Bulk1][r] = g
		}
	}

	prog("round-trip time")
	if rt, err := s.client.RTT(ctx, d); err != nil {
		notes = append(notes, fmt.Sprintf("rtt: %v", err))
	} else if len(rt.Samples) > 0 {
		out[RTTP50][r] = us(LatenciesOf(rt.Samples).P50)
	}
	return append(notes, measureUDP(ctx, cfg, s, r, out, prog)...)
}

// measureUDP takes the UDP figures: new flows (request/response on a new
// client port each time) from 1 and from N clients, the first response's
// latency, then bulk and RTT on one established flow.
func measureUDP(ctx context.Context, cfg Config, s *setup, r int, out map[FigureKey][]float64, prog func(string)) (notes []string) {
	d := cfg.Duration
	for _, run := range []struct {
		key     FigureKey
		clients int
	}{{UDPFlows1, 1}, {UDPFlowsN, cfg.Clients}} {
		prog(fmt.Sprintf("new UDP flows, %d client(s)", run.clients))
		fr, err := s.client.UDPFlowRate(ctx, run.clients, d, run.clients == 1)
		if err != nil {
			notes = append(notes, fmt.Sprintf("udp flow rate %d: %v", run.clients, err))
			continue
		}
		if fr.Failed > 0 {
			notes = append(notes, fmt.Sprintf("udp flow rate %d: %d of %d flows got no response, first: %v", run.clients, fr.Failed, fr.Conns+fr.Failed, fr.FirstErr))
		}
		out[run.key][r] = fr.PerSecond()
		if run.clients == 1 && fr.Conns > 0 {
			f := LatenciesOf(fr.FirstByte)
			out[UDPFirstP50][r], out[UDPFirstP99][r] = us(f.P50), us(f.P99)
		}
	}
	prog("UDP bulk, 1 flow")
	if br, err := s.client.UDPBulk(ctx, d); err != nil {
		notes = append(notes, fmt.Sprintf("udp bulk: %v", err))
	} else if br.Received == 0 {
		notes = append(notes, fmt.Sprintf("udp bulk: sent %d bytes, server received none", br.Sent))
	} else {
		out[UDPBulk1][r] = br.Gbps()
	}
	prog("UDP round-trip time")
	if rt, err := s.client.UDPRTT(ctx, d); err != nil {
		notes = append(notes, fmt.Sprintf("udp rtt: %v", err))
	} else if len(rt.Samples) > 0 {
		out[UDPRTTP50][r] = us(LatenciesOf(rt.Samples).P50)
	}
	return notes
}

// profileSetup records a profile of the variant's enforcers while they
// handle new connections from 1 and from N clients.
func profileSetup(ctx context.Context, cfg Config, s *setup) error {
	pids := s.v.EnforcerPIDs()
	if len(pids) == 0 {
		return nil
	}
	cfg.Progress(fmt.Sprintf("profiling %s", s.v.Name()))
	stop, err := profile(pids, filepath.Join(cfg.ProfileDir, sanitize(s.v.Name())+".perf.data"))
	if err != nil {
		return err
	}
	_, err1 := s.client.ConnRate(ctx, 1, cfg.Duration, false)
	_, err2 := s.client.ConnRate(ctx, cfg.Clients, cfg.Duration, false)
	return errors.Join(err1, err2, stop())
}

// profile starts `perf record` on pids; stop ends it and waits for it to
// write its file.
func profile(pids []int, out string) (stop func() error, err error) {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	cmd := exec.Command("perf", "record", "--quiet", "-g", "-F", "999", "-p", strings.Join(ps, ","), "-o", out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf record: %w", err)
	}
	time.Sleep(200 * time.Millisecond) // let it attach before the load starts
	return func() error {
		cmd.Process.Signal(os.Interrupt)
		err := cmd.Wait()
		// perf record writes its file and then dies of the SIGINT.
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGINT {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("perf record: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	}, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// sampleProcs sums the CPU time and peak RSS of the enforcer processes.
func sampleProcs(pids []int) (loadgen.ProcSample, error) {
	var sum loadgen.ProcSample
	for _, pid := range pids {
		s, err := loadgen.ReadProc(pid)
		if err != nil {
			return sum, fmt.Errorf("enforcer process %d: %w", pid, err)
		}
		sum.CPU += s.CPU
		sum.PeakRSS += s.PeakRSS
		sum.RSS += s.RSS
	}
	return sum, nil
}

func summarizeFigures(infos []FigureInfo, variants []string, baseline string, rounds map[string]map[FigureKey][]float64) []FigureResult {
	var out []FigureResult
	for _, fi := range infos {
		fr := FigureResult{FigureInfo: fi, Variants: map[string]*VariantFigure{}}
		for _, name := range variants {
			raw := rounds[name][fi.Key]
			vf := &VariantFigure{raw: raw, Rounds: make([]Value, len(raw))}
			for i, x := range raw {
				vf.Rounds[i] = Value(x)
			}
			if s := Summarize(raw); s.N > 0 {
				vf.Value = &s
			}
			if baseline != "" && !fi.Enforcer {
				base := rounds[baseline][fi.Key]
				if s := Summarize(Ratios(raw, base)); s.N > 0 {
					vf.Ratio = &s
				}
				if fi.Delta {
					if s := Summarize(Deltas(raw, base)); s.N > 0 {
						vf.Delta = &s
					}
				}
			}
			fr.Variants[name] = vf
		}
		out = append(out, fr)
	}
	return out
}
