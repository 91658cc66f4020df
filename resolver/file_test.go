package resolver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
)

// policyFile allows frontend -> web on the given TCP port; the policy is
// named after the port so that versions are told apart.
func policyFile(port int) string {
	return fmt.Sprintf(`targetNetworks: [10.0.0.0/16]
policies:
  - name: web-%d
    selector: app=web
    ingress:
      - name: from-frontend
        from:
          - selector: app=frontend
        ports: [tcp/%d]
        action: allow
`, port, port)
}

// broken has a misspelled key on line 4.
const broken = `policies:
  - name: web
    selector: app=web
    ingres: []
`

var (
	web      = identity.NewTags(map[string]string{"app": "web"})
	frontend = identity.New(identity.NewTags(map[string]string{"app": "frontend"}))
	peerAddr = netip.MustParseAddr("10.0.0.9")
)

// allowedPort says which port the engine lets frontend reach on web, as the
// daemon would ask it.
func allowedPort(t *testing.T, e *policy.Engine) int {
	t.Helper()
	pp := e.ForPU(web)
	found := 0
	for _, port := range []int{80, 81, 82, 83, 84, 85, 86, 87} {
		if pp.Ingress(frontend, peerAddr, ipproto.TCP, uint16(port)).Action == policy.Allow {
			if found != 0 {
				t.Fatalf("ports %d and %d both allowed", found, port)
			}
			found = port
		}
	}
	return found
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The requirement: a policy change is in force within one second.
const updateBound = time.Second

func waitUpdate(t *testing.T, r *File, what string, wantPort int) {
	t.Helper()
	start := time.Now()
	select {
	case e := <-r.Updates():
		if got := allowedPort(t, e); got != wantPort {
			t.Fatalf("%s: update allows port %d, want %d", what, got, wantPort)
		}
		if r.Current() != e {
			t.Fatalf("%s: Current is not the pushed engine", what)
		}
		t.Logf("%s: update after %v", what, time.Since(start))
	case <-time.After(updateBound):
		t.Fatalf("%s: no update within %v", what, updateBound)
	}
}

// noUpdate checks that nothing is pushed while the resolver handles a
// change (several debounce periods).
func noUpdate(t *testing.T, r *File, what string) {
	t.Helper()
	select {
	case e := <-r.Updates():
		t.Fatalf("%s: unexpected update (port %d)", what, allowedPort(t, e))
	case <-time.After(5 * testDebounce):
	}
}

func waitError(t *testing.T, f *File, what, want string) {
	t.Helper()
	deadline := time.Now().Add(updateBound)
	for f.LastError() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no error recorded", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := f.LastError().Error(); got != want {
		t.Fatalf("%s: error %q, want %q", what, got, want)
	}
	if st := f.Status(); st.LastError != want || st.ErrorAt.IsZero() {
		t.Fatalf("%s: status %+v", what, st)
	}
}

const testDebounce = 50 * time.Millisecond

func startFile(t *testing.T, path string) *File {
	t.Helper()
	f, err := NewFile(path, FileOptions{Debounce: testDebounce})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Let the watch be set up: Run reloads once after adding it, which
	// must not push an unchanged policy.
	noUpdate(t, f, "start")
	return f
}

func TestFileResolverEdits(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, policyFile(80))
	f := startFile(t, path)
	if got := allowedPort(t, f.Current()); got != 80 {
		t.Fatalf("initial policy allows %d", got)
	}
	if f.Current().ForPU(web).Ingress(frontend, peerAddr, ipproto.TCP, 80).Action != policy.Allow {
		t.Fatal("frontend -> web:80 not allowed")
	}

	// Each step changes the file one way and says what must follow.
	steps := []struct {
		name   string
		change func(t *testing.T)
		port   int    // expected port after the step; 0: no update
		err    string // expected LastError; "" none
	}{
		{"edit in place", func(t *testing.T) { write(t, path, policyFile(81)) }, 81, ""},
		{"broken edit", func(t *testing.T) { write(t, path, broken) }, 0, "want-load-error"},
		{"same broken content again", func(t *testing.T) { write(t, path, broken) }, 0, "want-load-error"},
		{"fix", func(t *testing.T) { write(t, path, policyFile(82)) }, 82, ""},
		{"rename over", func(t *testing.T) {
			tmp := filepath.Join(dir, ".policy.yaml.tmp")
			write(t, tmp, policyFile(83))
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, 83, ""},
		{"editor: move away, write new, delete backup", func(t *testing.T) {
			if err := os.Rename(path, path+"~"); err != nil {
				t.Fatal(err)
			}
			write(t, path, policyFile(84))
			os.Remove(path + "~")
		}, 84, ""},
		{"file deleted", func(t *testing.T) { os.Remove(path) }, 0, "open " + path + ": no such file or directory"},
		{"file back", func(t *testing.T) { write(t, path, policyFile(85)) }, 85, ""},
		{"unchanged rewrite", func(t *testing.T) { write(t, path, policyFile(85)) }, 0, ""},
	}
	for _, st := range steps {
		st.change(t)
		if st.port != 0 {
			waitUpdate(t, f, st.name, st.port)
		}
		if st.err != "" {
			want := st.err
			if want == "want-load-error" {
				// Exactly what `trireme policy check` prints (policy.Load).
				_, err := policy.Load(path)
				if err == nil || !strings.Contains(err.Error(), path+":4:5") {
					t.Fatalf("%s: policy.Load gives %v", st.name, err)
				}
				want = err.Error()
			}
			waitError(t, f, st.name, want)
			if got := allowedPort(t, f.Current()); got == 0 {
				t.Fatalf("%s: previous policy not in force", st.name)
			}
		}
		if st.port == 0 {
			noUpdate(t, f, st.name)
		}
		if st.err == "" && f.LastError() != nil {
			t.Fatalf("%s: error %v still recorded", st.name, f.LastError())
		}
	}
	if st := f.Status(); st.Reloads != 6 || st.Policies != 1 || st.LoadedAt.IsZero() {
		t.Errorf("status %+v: want 6 loads of 1 policy", st)
	}
}

// Kubernetes ConfigMap volumes: dir/policy.yaml -> ..data/policy.yaml,
// ..data -> ..<timestamp>; an update writes a new timestamped directory and
// renames a new ..data symlink over the old one.
// TestFileResolverBusyDirectory: another file in the policy's directory
// changing all the time (a flow log) does not postpone a reload beyond the
// bound: the debounce is capped.
func TestFileResolverBusyDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, policyFile(80))
	f := startFile(t, path)
	log, err := os.Create(filepath.Join(dir, "flows.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(testDebounce / 5):
				log.WriteString("{\"flow\":1}\n")
			}
		}
	}()
	defer func() { close(stop); <-done }()
	time.Sleep(3 * testDebounce) // the writes are going on
	write(t, path, policyFile(81))
	waitUpdate(t, f, "edit beside a busy log", 81)
	write(t, path, policyFile(82))
	waitUpdate(t, f, "second edit beside a busy log", 82)
}

func TestFileResolverConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(n, port int) string {
		d := fmt.Sprintf("..2026_11_23_%d", n)
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, d, "policy.yaml"), policyFile(port))
		return d
	}
	swap := func(target string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	v1 := version(1, 80)
	swap(v1)
	path := filepath.Join(dir, "policy.yaml")
	if err := os.Symlink("..data/policy.yaml", path); err != nil {
		t.Fatal(err)
	}
	f := startFile(t, path)
	prev := v1
	for i, port := range []int{81, 82, 83} {
		v := version(i+2, port)
		swap(v)
		if err := os.RemoveAll(filepath.Join(dir, prev)); err != nil {
			t.Fatal(err)
		}
		prev = v
		waitUpdate(t, f, "swap to "+v, port)
	}
	// A broken version swapped in is rejected like an edit.
	d := "..2026_11_23_9"
	os.Mkdir(filepath.Join(dir, d), 0o755)
	write(t, filepath.Join(dir, d, "policy.yaml"), broken)
	swap(d)
	_, want := policy.Load(path)
	if want == nil {
		t.Fatal("broken version loads")
	}
	waitError(t, f, "broken swap", want.Error())
	noUpdate(t, f, "broken swap")
	if got := allowedPort(t, f.Current()); got != 83 {
		t.Errorf("after broken swap port %d in force, want 83", got)
	}
}

// A symlink to a file replaced atomically (ln -sfn): the target's
// directory is elsewhere and the link itself is renamed over.
func TestFileResolverSymlinkToOtherDir(t *testing.T) {
	dir, store := t.TempDir(), t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	a, b := filepath.Join(store, "a.yaml"), filepath.Join(store, "b.yaml")
	write(t, a, policyFile(80))
	write(t, b, policyFile(81))
	if err := os.Symlink(a, path); err != nil {
		t.Fatal(err)
	}
	f := startFile(t, path)
	// Edit the target in place: only its directory sees the write.
	write(t, a, policyFile(82))
	waitUpdate(t, f, "edit symlink target", 82)
	// Swap the link to b.
	tmp := filepath.Join(dir, ".tmp-link")
	if err := os.Symlink(b, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitUpdate(t, f, "swap symlink", 81)
	write(t, b, policyFile(83))
	waitUpdate(t, f, "edit new target", 83)
}

func TestNewFileRejectsInvalid(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, content string }{
		{"broken", broken},
		{"not yaml", "policies: [\n"},
		{"missing", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".yaml")
			if tc.content != "" {
				write(t, path, tc.content)
			}
			_, want := policy.Load(path)
			f, err := NewFile(path, FileOptions{})
			if err == nil || want == nil || err.Error() != want.Error() {
				t.Fatalf("NewFile: %v (resolver %v), want %v", err, f, want)
			}
		})
	}
}

// TestLatestKeepsNewest: a reader that falls behind gets the newest policy
// pushed, never a stale one after it.
func TestLatestKeepsNewest(t *testing.T) {
	engine := func(port int) *policy.Engine {
		set, err := policy.Parse("p.yaml", []byte(policyFile(port)))
		if err != nil {
			t.Fatal(err)
		}
		e, err := policy.Compile(set)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	l := newLatest()
	select {
	case <-l.ch:
		t.Fatal("update before any push")
	default:
	}
	for _, p := range []int{81, 82, 83} {
		l.push(engine(p))
	}
	if got := allowedPort(t, <-l.ch); got != 83 {
		t.Errorf("reader got port %d, want the newest (83)", got)
	}
	select {
	case e := <-l.ch:
		t.Errorf("stale update %d", allowedPort(t, e))
	default:
	}
}

// BenchmarkFileReload: read, hash, parse and compile a changed file and
// put it in force (what an edit costs, debounce aside).
func BenchmarkFileReload(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	contents := [2][]byte{[]byte(policyFile(80)), []byte(policyFile(81))}
	if err := os.WriteFile(path, contents[0], 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := NewFile(path, FileOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := os.WriteFile(path, contents[(i+1)%2], 0o644); err != nil {
			b.Fatal(err)
		}
		if ok, err := f.Reload(); !ok || err != nil {
			b.Fatalf("reload: %v %v", ok, err)
		}
		<-f.Updates()
	}
}

// The networks of the options are part of every content compiled, once
// each: the first and a reloaded one.
func TestFileResolverAddedNetworks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write(t, path, policyFile(80))
	target, excluded := netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.0.2.0/24")
	f, err := NewFile(path, FileOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		TargetNetworks: []netip.Prefix{target}, ExcludedNetworks: []netip.Prefix{excluded}})
	if err != nil {
		t.Fatal(err)
	}
	want := func(what string, e *policy.Engine) {
		t.Helper()
		s := e.Set()
		wantT := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), target}
		if fmt.Sprint(s.TargetNetworks) != fmt.Sprint(wantT) || fmt.Sprint(s.ExcludedNetworks) != fmt.Sprint([]netip.Prefix{excluded}) {
			t.Fatalf("%s: networks %v / %v, want %v / %v", what, s.TargetNetworks, s.ExcludedNetworks, wantT, []netip.Prefix{excluded})
		}
	}
	want("first", f.Current())
	write(t, path, policyFile(81))
	if changed, err := f.Reload(); !changed || err != nil {
		t.Fatalf("Reload = %v, %v", changed, err)
	}
	e := <-f.Updates()
	if got := allowedPort(t, e); got != 81 {
		t.Fatalf("reloaded policy allows port %d, want 81", got)
	}
	want("reloaded", e)
}
