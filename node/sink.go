package node

import (
	"bufio"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane"
)

// asyncSink hands flow records to a writer goroutine: the enforcer calls
// Record with its locks held, so it must never wait on the disk. When the
// queue is full, records are dropped and counted.
type asyncSink struct {
	log     *slog.Logger
	ch      chan dataplane.Record
	dropped atomic.Uint64
	done    sync.WaitGroup
	f       *os.File
}

func newAsyncSink(log *slog.Logger) *asyncSink {
	return &asyncSink{log: log, ch: make(chan dataplane.Record, 4096)}
}

func (s *asyncSink) open(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	s.f = f
	s.done.Add(1)
	go s.run()
	return nil
}

// Record implements dataplane.Sink.
func (s *asyncSink) Record(r *dataplane.Record) {
	select {
	case s.ch <- *r:
	default:
		s.dropped.Add(1)
	}
}

func (s *asyncSink) run() {
	defer s.done.Done()
	// Flushed by the ticker, not every 4 KiB: at a few thousand flows per
	// second each write(2) woke the Go runtime's sysmon into 20 µs polling
	// (the last per-connection syscall through syscall.Syscall).
	w := bufio.NewWriterSize(s.f, 256<<10)
	js := dataplane.NewJSONLSink(w)
	flush := time.NewTicker(200 * time.Millisecond)
	defer flush.Stop()
	for {
		select {
		case r, ok := <-s.ch:
			if !ok {
				w.Flush()
				return
			}
			js.Record(&r)
		case <-flush.C:
			if err := w.Flush(); err != nil {
				s.log.Error("writing flow log", "err", err)
			}
		}
	}
}

func (s *asyncSink) close() {
	if s.f == nil {
		return
	}
	close(s.ch)
	s.done.Wait()
	s.f.Close()
}
