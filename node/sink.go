package node

import (
	"bufio"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/ipproto"
)

// flowLogConfig: where the flow records go and how the log is bounded.
type flowLogConfig struct {
	Path string
	// MaxSize is the size at which the log is rotated (flows.jsonl becomes
	// flows.jsonl.1, .1 becomes .2, ...); Files is how many rotated files
	// are kept. The log takes at most (Files+1) * MaxSize bytes.
	MaxSize int64
	Files   int
	// Aggregate is the interval over which repeated refusals are folded
	// into one record; 0: every record is written.
	Aggregate time.Duration
	// QueueCap bounds the records waiting for the writer; beyond it,
	// Record waits (back-pressure) rather than drop. 0: defaultQueueCap.
	QueueCap int
}

// defaultQueueCap holds a burst of 40,000 flow ends (the table expiring at
// once after a load stops) without waiting; ~30 MiB when full.
const defaultQueueCap = 64 << 10

// maxAggKeys bounds the aggregator's memory; refusals of keys beyond it
// are written one by one (still rotated).
const maxAggKeys = 16 << 10

// asyncSink hands flow records to a writer goroutine: the enforcer calls
// Record with its locks held, so it must never wait on the disk. Records
// queue in memory (up to QueueCap, then Record waits for room: nothing is
// dropped while the writer works); the writer encodes them, rotates the
// file by size, and writes the aggregates of repeated refusals.
type asyncSink struct {
	log *slog.Logger
	cfg flowLogConfig

	mu     sync.Mutex
	q      []dataplane.Record // waiting for the writer
	room   *sync.Cond         // signalled when the writer takes the queue
	closed bool
	wake   chan struct{}
	done   chan struct{}

	agg aggregator

	// Counters (stats): records lost (written to a failing disk, or after
	// the sink closed), records written, refusals folded into aggregates,
	// and how often Record had to wait for room.
	dropped, written, aggregated, waits atomic.Uint64
	lastErr                             atomic.Int64 // unix ns of the last write error logged
	stopping                            atomic.Bool
}

func newAsyncSink(log *slog.Logger) *asyncSink {
	s := &asyncSink{log: log, wake: make(chan struct{}, 1), done: make(chan struct{}), cfg: flowLogConfig{QueueCap: defaultQueueCap}}
	s.room = sync.NewCond(&s.mu)
	return s
}

// open starts writing to cfg.Path (appending to what is there).
func (s *asyncSink) open(cfg flowLogConfig) error {
	if cfg.QueueCap <= 0 {
		cfg.QueueCap = defaultQueueCap
	}
	f, err := openRotating(cfg.Path, cfg.MaxSize, cfg.Files)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cfg = cfg
	s.mu.Unlock()
	s.agg.init(cfg.Aggregate)
	go s.run(f)
	return nil
}

// Record implements dataplane.Sink.
func (s *asyncSink) Record(r *dataplane.Record) {
	if s.stopping.Load() {
		s.dropped.Add(1)
		return
	}
	if s.agg.fold(r) {
		s.aggregated.Add(1)
		return
	}
	s.mu.Lock()
	for len(s.q) >= s.cfg.QueueCap && !s.closed {
		s.waits.Add(1)
		s.room.Wait()
	}
	if s.closed {
		s.mu.Unlock()
		s.dropped.Add(1)
		return
	}
	s.q = append(s.q, *r)
	first := len(s.q) == 1
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *asyncSink) run(f *rotatingFile) {
	defer close(s.done)
	var line []byte // one record, reused: encoding allocates nothing
	var spare []dataplane.Record
	flush := time.NewTicker(200 * time.Millisecond)
	defer flush.Stop()
	var aggTick <-chan time.Time
	if s.cfg.Aggregate > 0 {
		t := time.NewTicker(s.cfg.Aggregate)
		defer t.Stop()
		aggTick = t.C
	}
	write := func(r *dataplane.Record) {
		var err error
		if line, err = r.AppendJSON(line[:0]); err == nil {
			line = append(line, '\n')
			_, err = f.Write(line)
		}
		if err != nil {
			s.dropped.Add(1)
			s.logWriteError(err)
			return
		}
		s.written.Add(1)
	}
	for {
		select {
		case <-s.wake:
		case <-flush.C:
			if err := f.Flush(); err != nil {
				s.logWriteError(err)
			}
			continue
		case now := <-aggTick:
			for _, r := range s.agg.flush(now) {
				write(&r)
			}
			continue
		}
		// Take the whole queue; the callers fill the other buffer.
		s.mu.Lock()
		batch := s.q
		s.q = spare[:0]
		closed := s.closed
		s.room.Broadcast()
		s.mu.Unlock()
		for i := range batch {
			write(&batch[i])
			batch[i] = dataplane.Record{} // let go of its strings
		}
		spare = batch
		if closed {
			s.mu.Lock()
			empty := len(s.q) == 0
			s.mu.Unlock()
			if !empty {
				// Records queued before close but after the batch.
				select {
				case s.wake <- struct{}{}:
				default:
				}
				continue
			}
			for _, r := range s.agg.flush(time.Now()) {
				write(&r)
			}
			if err := f.Close(); err != nil {
				s.logWriteError(err)
			}
			return
		}
	}
}

// errLogEvery limits write-error logs.
var errLogEvery = 10 * time.Second

func (s *asyncSink) logWriteError(err error) {
	now := time.Now().UnixNano()
	last := s.lastErr.Load()
	if now-last < int64(errLogEvery) || !s.lastErr.CompareAndSwap(last, now) {
		return
	}
	s.log.Error("writing flow log", "err", err, "records-dropped", s.dropped.Load())
}

// close writes what is queued and the pending aggregates, and closes the
// file. Records that arrive later are dropped (and counted).
func (s *asyncSink) close() {
	s.mu.Lock()
	if s.cfg.Path == "" || s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.stopping.Store(true)
	s.room.Broadcast()
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.done
}

// ---- aggregation ----

// aggKey is what makes refusals "the same" for aggregation: everything but
// the client's port, so a flood from varying ports folds into one record.
type aggKey struct {
	pu, direction, action, reason string
	proto                         ipproto.Proto
	client                        netip.Addr
	server                        netip.AddrPort
	rule                          dataplane.RuleInfo
	hasRule                       bool
}

type aggEntry struct {
	rec     dataplane.Record // first folded record of the interval, then the sums
	count   uint64           // folded in this interval
	singles int              // written one by one since the key was new
	active  bool             // seen in this interval
}

// aggSingles refusals of a key are written one by one before the next are
// folded: an occasional repeat stays visible as itself (its client port),
// a flood costs aggSingles records, then one per interval.
const aggSingles = 10

// aggregator folds refused flows (records whose action is not "allow")
// with the same key: the first aggSingles of a key are written at once, the
// further ones of each interval become one record with their count,
// written at the end of the interval. A key not seen for a whole interval
// is forgotten.
type aggregator struct {
	mu       sync.Mutex
	interval time.Duration
	m        map[aggKey]*aggEntry
}

func (a *aggregator) init(interval time.Duration) {
	a.interval = interval
	a.m = map[aggKey]*aggEntry{}
}

func keyOf(r *dataplane.Record) aggKey {
	k := aggKey{pu: r.Local.ID, direction: r.Direction, proto: r.Proto, action: r.Action, reason: r.Reason,
		client: r.Client.Addr(), server: r.Server}
	if r.Rule != nil {
		k.rule, k.hasRule = *r.Rule, true
	}
	return k
}

// fold takes r into an aggregate and reports whether it did (then r is not
// to be written on its own).
func (a *aggregator) fold(r *dataplane.Record) bool {
	if a.interval <= 0 || r.Action == "allow" || r.End == dataplane.EndEstablished {
		return false
	}
	k := keyOf(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.m[k]
	if e == nil {
		if len(a.m) >= maxAggKeys {
			return false
		}
		e = &aggEntry{}
		a.m[k] = e
	}
	e.active = true
	if e.singles < aggSingles {
		e.singles++
		return false // written as it is
	}
	if e.count == 0 {
		e.rec = *r
		e.rec.Client = netip.AddrPortFrom(r.Client.Addr(), 0)
	} else {
		if r.Time.Before(e.rec.Time) {
			e.rec.Time = r.Time
		}
		if r.EndTime.After(e.rec.EndTime) {
			e.rec.EndTime = r.EndTime
		}
		e.rec.PacketsOut += r.PacketsOut
		e.rec.PacketsIn += r.PacketsIn
		e.rec.BytesOut += r.BytesOut
		e.rec.BytesIn += r.BytesIn
	}
	e.count++
	return true
}

// flush returns the aggregates of the interval that ended and starts the
// next one.
func (a *aggregator) flush(time.Time) []dataplane.Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []dataplane.Record
	for k, e := range a.m {
		if !e.active {
			delete(a.m, k)
			continue
		}
		e.active = false
		if e.count == 0 {
			continue
		}
		r := e.rec
		r.Count = e.count
		out = append(out, r)
		e.rec, e.count = dataplane.Record{}, 0
	}
	return out
}

// ---- rotation ----

// rotatingFile is the flow log: buffered appends to Path, which is renamed
// to Path.1 (.1 to .2, ...) when the next line would make it exceed
// maxSize; keep rotated files are kept.
type rotatingFile struct {
	path    string
	maxSize int64
	keep    int
	f       *os.File
	w       *bufio.Writer
	size    int64
	err     error // of the last rotation: writes fail until one works
}

func openRotating(path string, maxSize int64, keep int) (*rotatingFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	r := &rotatingFile{path: path, maxSize: maxSize, keep: keep}
	if err := r.openFile(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotatingFile) openFile() error {
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	// Flushed by the writer's ticker, not every 4 KiB: at a few thousand
	// flows per second each write(2) woke the Go runtime's sysmon into
	// 20 µs polling (the last per-connection syscall through
	// syscall.Syscall).
	r.f, r.w, r.size = f, bufio.NewWriterSize(f, 256<<10), st.Size()
	return nil
}

// Write appends one line (the writer writes a record in one call).
func (r *rotatingFile) Write(p []byte) (int, error) {
	if r.maxSize > 0 && r.size > 0 && r.size+int64(len(p)) > r.maxSize {
		r.err = r.rotate()
	}
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.w.Write(p)
	r.size += int64(n)
	return n, err
}

func (r *rotatingFile) rotate() error {
	if r.f != nil {
		err := errors.Join(r.w.Flush(), r.f.Close())
		r.f = nil
		if err != nil {
			return err
		}
	}
	if r.keep <= 0 {
		if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else {
		for i := r.keep - 1; i >= 1; i-- {
			if err := os.Rename(rotated(r.path, i), rotated(r.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if err := os.Rename(r.path, rotated(r.path, 1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return r.openFile()
}

func rotated(path string, i int) string { return path + "." + strconv.Itoa(i) }

// Flush writes the buffered lines to the file.
func (r *rotatingFile) Flush() error {
	if r.f == nil {
		return r.err
	}
	return r.w.Flush()
}

// Close flushes and closes the file.
func (r *rotatingFile) Close() error {
	if r.f == nil {
		return r.err
	}
	err := errors.Join(r.w.Flush(), r.f.Close())
	r.f = nil
	return err
}

// FlowLogFiles lists the files of a flow log: the current one and the
// rotated ones that exist, newest first.
func FlowLogFiles(path string) []string {
	out := []string{path}
	for i := 1; ; i++ {
		p := rotated(path, i)
		if _, err := os.Stat(p); err != nil {
			return out
		}
		out = append(out, p)
	}
}
