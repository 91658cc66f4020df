package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/dataplane/replay"
	"github.com/trireme-go/trireme/policy"
)

func init() { rootCmd.AddCommand(newReplayCmd()) }

func newReplayCmd() *cobra.Command {
	var (
		topoPath, policyPath, outDir, midStream string
		asJSON, pki                             bool
		mtu                                     int
	)
	cmd := &cobra.Command{
		Use:   "replay --topology FILE --policy FILE [--out DIR] CAPTURE...",
		Short: "Run packet captures through the enforcers of a topology, offline",
		Long: `replay runs each captured packet through its sender's enforcer (application
path) when the sender is a PU, then through its receiver's enforcer (network
path) when the receiver is a PU, with the capture's timestamps as the clock.
The topology file maps addresses to PUs (name, tags, node); other addresses
are external hosts. With --out it writes wire.pcap (frames between
enforcers, tokens included), delivered-<pu>.pcap (what each PU received)
and flows.jsonl (flow records). pcap and pcapng; Ethernet, raw IP and Linux
cooked captures. The summary ends with the replay's speed (packets/s, wall
and CPU time). A capture that ends inside a packet (a truncated file) prints
the summary of the packets read, then the error, and exits non-zero.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, captures []string) error {
			if topoPath == "" || policyPath == "" {
				return &exitError{code: 2, err: errors.New("--topology and --policy are required")}
			}
			topo, err := replay.LoadTopology(topoPath)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			set, err := policy.Load(policyPath)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			var mode dataplane.MidStream
			if err := mode.UnmarshalText([]byte(midStream)); err != nil {
				return &exitError{code: 2, err: err}
			}
			var out *replayFiles
			if outDir != "" {
				if out, err = newReplayFiles(outDir); err != nil {
					return err
				}
			}
			rep := replayReport{Summary: replay.Summary{Dropped: map[string]int{}}}
			var clock replayClock
			var failed error
			for _, path := range captures {
				var o replay.Output
				if out != nil {
					o = out
				}
				clock.start()
				r, err := replay.New(replay.Options{Topology: topo, Policy: set, PKI: pki, MidStream: mode, MTU: mtu, Out: o})
				if err != nil {
					return &exitError{code: 2, err: err}
				}
				clock.setupDone()
				err = replayFile(r, path, &rep.Summary)
				// A capture that fails midway still ends its flows: the
				// summary counts the packets read so far.
				add(&rep.Summary, r.Finish())
				clock.stop()
				if err != nil {
					failed = err
					break
				}
			}
			if out != nil {
				if err := out.Close(); err != nil && failed == nil {
					failed = err
				}
			}
			clock.report(&rep)
			if failed != nil {
				rep.Error = failed.Error()
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printSummary(w, rep)
			}
			if failed != nil {
				return &exitError{code: 1, err: failed}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&topoPath, "topology", "", "topology YAML: PUs (name, ip/ips, tags, node), optional target/excluded networks")
	f.StringVar(&policyPath, "policy", "", "policy YAML")
	f.StringVar(&outDir, "out", "", "directory for wire.pcap, delivered-<pu>.pcap and flows.jsonl")
	f.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	f.BoolVar(&pki, "pki", false, "give nodes certificates from a throwaway in-memory CA (default: a shared PSK)")
	f.StringVar(&midStream, "mid-stream", "drop", "rule for packets of unknown TCP flows: drop, reset or acl")
	f.IntVar(&mtu, "mtu", 0, "largest IP packet a token insertion may make (0: 1500, -1: no limit)")
	return cmd
}

// replayReport is what `trireme replay` prints: the summary of every
// capture and how fast they were replayed.
type replayReport struct {
	replay.Summary
	// Seconds and CPUSeconds are the wall and process CPU time spent
	// reading and replaying the packets (enforcer setup excluded: it is
	// SetupSeconds); the rates are PacketsIn over them.
	Seconds             float64 `json:"seconds"`
	CPUSeconds          float64 `json:"cpuSeconds"`
	PacketsPerSecond    float64 `json:"packetsPerSecond"`
	PacketsPerCPUSecond float64 `json:"packetsPerCPUSecond"`
	SetupSeconds        float64 `json:"setupSeconds"`
	// Error is why the replay stopped early (a truncated capture): the
	// figures above are those of the packets read until then.
	Error string `json:"error,omitempty"`
}

// replayClock adds up the wall and CPU time of the replays and of their
// setup.
type replayClock struct {
	wall0, wall1 time.Time
	cpu0, cpu1   time.Duration
	setup, run   time.Duration
	cpu          time.Duration
}

func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (c *replayClock) start() { c.wall0 = time.Now() }

func (c *replayClock) setupDone() {
	c.wall1, c.cpu0 = time.Now(), processCPU()
	c.setup += c.wall1.Sub(c.wall0)
}

func (c *replayClock) stop() {
	c.run += time.Since(c.wall1)
	c.cpu += processCPU() - c.cpu0
}

func (c *replayClock) report(r *replayReport) {
	r.Seconds, r.CPUSeconds, r.SetupSeconds = c.run.Seconds(), c.cpu.Seconds(), c.setup.Seconds()
	if r.Seconds > 0 {
		r.PacketsPerSecond = float64(r.PacketsIn) / r.Seconds
	}
	if r.CPUSeconds > 0 {
		r.PacketsPerCPUSecond = float64(r.PacketsIn) / r.CPUSeconds
	}
}

func add(t *replay.Summary, s replay.Summary) {
	t.PacketsIn += s.PacketsIn
	t.Forwarded += s.Forwarded
	t.Consumed += s.Consumed
	t.Injected += s.Injected
	t.ConnectionsAllowed += s.ConnectionsAllowed
	t.ConnectionsDenied += s.ConnectionsDenied
	t.ConnectionsIncomplete += s.ConnectionsIncomplete
	t.Flows += s.Flows
	t.Evictions += s.Evictions
	for k, v := range s.Dropped {
		t.Dropped[k] += v
	}
	if len(s.Handshake) > 0 && t.Handshake == nil {
		t.Handshake = map[string]int{}
	}
	for k, v := range s.Handshake {
		t.Handshake[k] += v
	}
	t.Lost += s.Lost
}

// countingReader counts bytes for the progress bar.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func replayFile(r *replay.Replayer, path string, total *replay.Summary) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	cr := &countingReader{r: f}
	rd, err := pcapio.NewReader(bufio.NewReaderSize(cr, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	progress := term.IsTerminal(int(os.Stderr.Fd())) && st.Size() > 1<<20
	lastDraw := time.Time{}
	name := filepath.Base(path)
	for i := 0; ; i++ {
		p, err := rd.NextShared() // Packet copies what it keeps
		if err == io.EOF {
			break
		}
		if errors.Is(err, pcapio.ErrLinkType) {
			total.Unreadable++
			continue
		}
		if err != nil {
			if progress {
				fmt.Fprintln(os.Stderr)
			}
			return fmt.Errorf("%s: %w", path, err)
		}
		r.Packet(i, p.Time, p.Frame)
		if progress && i%1024 == 0 && time.Since(lastDraw) > 100*time.Millisecond {
			lastDraw = time.Now()
			drawProgress(name, cr.n, st.Size(), i+1)
		}
	}
	if progress {
		drawProgress(name, st.Size(), st.Size(), -1)
		fmt.Fprintln(os.Stderr)
	}
	return nil
}

func drawProgress(name string, done, size int64, pkts int) {
	const width = 30
	frac := float64(done) / float64(max(size, 1))
	frac = min(frac, 1)
	bar := make([]byte, width)
	for i := range bar {
		if float64(i) < frac*width {
			bar[i] = '#'
		} else {
			bar[i] = '.'
		}
	}
	count := ""
	if pkts >= 0 {
		count = fmt.Sprintf(" %d packets", pkts)
	}
	fmt.Fprintf(os.Stderr, "\r%s [%s] %3.0f%%%s", name, bar, frac*100, count)
}

func printSummary(w io.Writer, rep replayReport) {
	s := rep.Summary
	dropped := 0
	for _, n := range s.Dropped {
		dropped += n
	}
	fmt.Fprintf(w, "packets in     %d\n", s.PacketsIn)
	fmt.Fprintf(w, "forwarded      %d\n", s.Forwarded)
	fmt.Fprintf(w, "consumed       %d\n", s.Consumed)
	fmt.Fprintf(w, "dropped        %d\n", dropped)
	names := make([]string, 0, len(s.Dropped))
	for k := range s.Dropped {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "  %-22s %d\n", k, s.Dropped[k])
	}
	fmt.Fprintf(w, "injected       %d\n", s.Injected)
	if s.Unreadable > 0 {
		fmt.Fprintf(w, "unreadable     %d (unsupported link type)\n", s.Unreadable)
	}
	if len(s.Handshake) > 0 || s.Lost > 0 {
		fmt.Fprintf(w, "handshake      %d hello, %d reply, %d confirm", s.Handshake["hello"], s.Handshake["reply"], s.Handshake["confirm"])
		if n := s.Handshake["reject"]; n > 0 {
			fmt.Fprintf(w, ", %d reject", n)
		}
		fmt.Fprint(w, " on the wire")
		if s.Lost > 0 {
			fmt.Fprintf(w, ", %d lost", s.Lost)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "connections    %d allowed, %d denied, %d incomplete\n", s.ConnectionsAllowed, s.ConnectionsDenied, s.ConnectionsIncomplete)
	fmt.Fprintf(w, "flow records   %d\n", s.Flows)
	if s.Evictions > 0 {
		fmt.Fprintf(w, "evictions      %d\n", s.Evictions)
	}
	fmt.Fprintf(w, "speed          %.0f packets/s (%d packets in %.3f s; %.3f s CPU: %.0f packets per CPU-second; setup %.3f s)\n",
		rep.PacketsPerSecond, s.PacketsIn, rep.Seconds, rep.CPUSeconds, rep.PacketsPerCPUSecond, rep.SetupSeconds)
}

// replayFiles writes the replay's pcaps and flow records.
type replayFiles struct {
	dir       string
	wire      *pcapio.Writer
	delivered map[string]*pcapio.Writer
	flows     *os.File
	sink      *dataplane.JSONLSink
	bw        *bufio.Writer
	err       error
}

func newReplayFiles(dir string) (*replayFiles, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	w, err := pcapio.Create(filepath.Join(dir, "wire.pcap"))
	if err != nil {
		return nil, err
	}
	fl, err := os.Create(filepath.Join(dir, "flows.jsonl"))
	if err != nil {
		w.Close()
		return nil, err
	}
	bw := bufio.NewWriter(fl)
	return &replayFiles{dir: dir, wire: w, delivered: map[string]*pcapio.Writer{}, flows: fl, bw: bw,
		sink: dataplane.NewJSONLSink(bw)}, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]`)

func (o *replayFiles) Wire(t time.Time, f []byte) {
	if err := o.wire.Write(t, f); err != nil && o.err == nil {
		o.err = err
	}
}

func (o *replayFiles) Delivered(pu string, t time.Time, f []byte, _ int) {
	w := o.delivered[pu]
	if w == nil {
		var err error
		w, err = pcapio.Create(filepath.Join(o.dir, "delivered-"+unsafeName.ReplaceAllString(pu, "_")+".pcap"))
		if err != nil {
			if o.err == nil {
				o.err = err
			}
			return
		}
		o.delivered[pu] = w
	}
	if err := w.Write(t, f); err != nil && o.err == nil {
		o.err = err
	}
}

func (o *replayFiles) Record(r *dataplane.Record) { o.sink.Record(r) }

func (o *replayFiles) Close() error {
	err := o.err
	keep := func(e error) {
		if err == nil {
			err = e
		}
	}
	keep(o.wire.Close())
	for _, w := range o.delivered {
		keep(w.Close())
	}
	keep(o.sink.Err())
	keep(o.bw.Flush())
	keep(o.flows.Close())
	return err
}
