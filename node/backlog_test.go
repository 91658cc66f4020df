package node

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBacklogTuner: the backlog is raised as PUs are added, never lowered,
// read only when more room is needed; hidden, it is said once.
func TestBacklogTuner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netdev_max_backlog")
	if err := os.WriteFile(path, []byte("1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	b := backlogTuner{path: path, log: slog.New(slog.NewTextHandler(&logs, nil))}
	read := func() string {
		got, _ := os.ReadFile(path)
		return strings.TrimSpace(string(got))
	}
	b.ensure(100) // 400 < 1000
	if read() != "1000" || b.limit != 1000 {
		t.Fatalf("100 PUs: backlog %s (known %d), want 1000", read(), b.limit)
	}
	b.ensure(1000)
	if read() != "4000" || b.limit != 4000 || !strings.Contains(logs.String(), "raised net.core.netdev_max_backlog") {
		t.Fatalf("1000 PUs: backlog %s (known %d), want 4000 and a log line:\n%s", read(), b.limit, logs.String())
	}
	// Someone lowers it behind the daemon's back: not read again until
	// more room is needed.
	os.WriteFile(path, []byte("500\n"), 0o644)
	b.ensure(900)
	if read() != "500" {
		t.Fatalf("900 PUs: backlog %s, want it untouched (500)", read())
	}
	b.ensure(1001)
	if read() != "4004" {
		t.Fatalf("1001 PUs: backlog %s, want 4004", read())
	}

	logs.Reset()
	hidden := backlogTuner{path: filepath.Join(t.TempDir(), "absent"), log: slog.New(slog.NewTextHandler(&logs, nil))}
	hidden.ensure(100)
	if logs.Len() != 0 {
		t.Fatalf("hidden, 100 PUs: %s", logs.String())
	}
	hidden.ensure(300)
	hidden.ensure(400)
	if n := strings.Count(logs.String(), "cannot check net.core.netdev_max_backlog"); n != 1 {
		t.Fatalf("hidden: warned %d times, want once:\n%s", n, logs.String())
	}
}
