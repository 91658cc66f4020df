package resolver

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/trireme-go/trireme/policy"
)

// DefaultDebounce is how long the file resolver waits after the last change
// in the watched directories before it reads the file: editors and
// `kubectl` write in several steps.
const DefaultDebounce = 100 * time.Millisecond

// FileOptions tune a File resolver.
type FileOptions struct {
	Debounce time.Duration // DefaultDebounce when 0
	Logger   *slog.Logger
	// TargetNetworks and ExcludedNetworks are added to the file's own
	// before each content is compiled (the daemon's config adds its
	// networks this way: one compilation per content).
	TargetNetworks, ExcludedNetworks []netip.Prefix
}

// Status is the resolver's view of its file, for `trireme stats`.
type Status struct {
	File     string
	LoadedAt time.Time // when the policy in force was loaded
	Policies int       // policies in the policy in force
	Reloads  uint64    // successful loads, the first included
	Rejected uint64    // contents rejected
	// LastError is why the newest content of the file is not in force
	// ("" when it is); ErrorAt is when that was found.
	LastError string
	ErrorAt   time.Time
}

// File is the policy in force, read from a policy file. It watches the file's directory
// (and, when the path is a symlink, its target's directory) with fsnotify,
// so edits in place, editors that write a new file and rename it over the
// old one, and symlink swaps (Kubernetes ConfigMap volumes) are all seen.
// A change is parsed and compiled completely before it is put in force; an
// invalid file is rejected with the same file:line:col errors as
// `trireme policy check`, logged, and recorded (LastError), and the
// previous policy stays in force.
type File struct {
	path     string // as given: error messages name it this way
	abs      string
	debounce time.Duration
	log      *slog.Logger
	// added to the file's networks (FileOptions)
	targets, excluded []netip.Prefix

	cur     atomic.Pointer[policy.Engine]
	updates latest

	mu      sync.Mutex
	status  Status
	lastErr error
	hash    [32]byte // content in force
	badHash [32]byte // newest rejected content (not re-reported)
	hasBad  bool
}

// NewFile loads the policy file and returns a resolver holding it. An
// invalid file is an error (the daemon refuses to start without a policy);
// call Run to follow changes.
func NewFile(path string, opts FileOptions) (*File, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	f := &File{path: path, abs: abs, debounce: opts.Debounce, log: opts.Logger, updates: newLatest(),
		targets: opts.TargetNetworks, excluded: opts.ExcludedNetworks}
	if f.debounce <= 0 {
		f.debounce = DefaultDebounce
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.log = f.log.With("policy", path)
	f.status.File = path
	if _, err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) Current() *policy.Engine { return f.cur.Load() }

func (f *File) Updates() <-chan *policy.Engine { return f.updates.ch }

// LastError is why the file's newest content is not in force (nil when it
// is). It is a policy.ErrorList for invalid files.
func (f *File) LastError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}

// ErrorAt is when LastError was found (zero when there is none).
func (f *File) ErrorAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status.ErrorAt
}

// Status returns a snapshot of the resolver's state.
func (f *File) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Reload reads, parses and compiles the file now. It reports whether a new
// policy was put in force; unchanged content is not reloaded. On error the
// previous policy stays in force and the error is recorded.
func (f *File) Reload() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()
	data, err := readLimited(f.path)
	if err != nil {
		return false, f.reject(err, nil)
	}
	sum := sha256.Sum256(data)
	if f.cur.Load() != nil && sum == f.hash {
		f.clearError() // e.g. a broken edit reverted
		return false, nil
	}
	if f.hasBad && sum == f.badHash {
		return false, f.lastErr // same broken content: already reported
	}
	set, err := policy.Parse(f.path, data)
	if err == nil {
		set.TargetNetworks = append(set.TargetNetworks, f.targets...)
		set.ExcludedNetworks = append(set.ExcludedNetworks, f.excluded...)
		var e *policy.Engine
		if e, err = policy.Compile(set); err == nil {
			initial := f.cur.Swap(e) == nil
			f.hash, f.hasBad = sum, false
			f.status.LoadedAt = time.Now()
			f.status.Policies = len(set.Policies)
			f.status.Reloads++
			f.clearError()
			if !initial { // the first policy is read with Current
				f.updates.push(e)
			}
			f.log.Info("policy loaded", "policies", len(set.Policies), "took", time.Since(start))
			return true, nil
		}
	}
	return false, f.reject(err, &sum)
}

// readLimited reads the file as policy.Load does (same size bound).
func readLimited(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return io.ReadAll(io.LimitReader(fh, policy.MaxFileSize+1))
}

func (f *File) reject(err error, sum *[32]byte) error {
	f.lastErr = err
	f.status.LastError = err.Error()
	f.status.ErrorAt = time.Now()
	f.status.Rejected++
	if sum != nil {
		f.badHash, f.hasBad = *sum, true
	} else {
		f.hasBad = false
	}
	if f.cur.Load() != nil {
		f.log.Error("policy file rejected; previous policy stays in force", "error", err)
	}
	return err
}

func (f *File) clearError() {
	f.lastErr = nil
	f.status.LastError = ""
	f.status.ErrorAt = time.Time{}
}

// Run watches the file until ctx is done. It returns an error only when
// the watch cannot be set up.
func (f *File) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy watch: %w", err)
	}
	defer w.Close()
	watched := map[string]bool{}
	if err := f.watchDirs(w, watched); err != nil {
		return err
	}
	// A change between NewFile and the watch would be missed otherwise.
	f.Reload()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// The debounce restarts at every event in the watched directories, but
	// a burst is read at the latest maxWait after its first event: a
	// directory that never settles (a flow log or a socket beside the
	// policy file) must not postpone a reload for ever.
	maxWait := 4 * f.debounce
	var burst time.Time
	arm := func() {
		now := time.Now()
		if burst.IsZero() {
			burst = now
		}
		timer.Reset(min(f.debounce, max(burst.Add(maxWait).Sub(now), 0)))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op.Has(fsnotify.Remove) || ev.Op.Has(fsnotify.Rename) {
				if watched[ev.Name] {
					delete(watched, ev.Name) // a watched directory went away
				}
			}
			arm()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			f.log.Warn("policy watch", "error", err)
			arm()
		case <-timer.C:
			burst = time.Time{}
			f.Reload()
			if err := f.watchDirs(w, watched); err != nil {
				// e.g. the directory itself was replaced: retry until it is back.
				f.log.Warn("policy watch", "error", err)
				timer.Reset(time.Second)
			}
		}
	}
}

// watchDirs watches the file's directory and the directory of the file
// the path finally resolves to (symlinks), which changes on a swap.
func (f *File) watchDirs(w *fsnotify.Watcher, watched map[string]bool) error {
	dirs := []string{filepath.Dir(f.abs)}
	if real, err := filepath.EvalSymlinks(f.abs); err == nil {
		dirs = append(dirs, filepath.Dir(real))
	}
	want := map[string]bool{}
	for _, d := range dirs {
		want[d] = true
		if watched[d] {
			continue
		}
		if err := w.Add(d); err != nil {
			return fmt.Errorf("policy watch %s: %w", d, err)
		}
		watched[d] = true
	}
	// Stop watching old symlink targets (never the file's own directory).
	for d := range watched {
		if !want[d] {
			w.Remove(d)
			delete(watched, d)
		}
	}
	return nil
}
