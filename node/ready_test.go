package node

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notReadyController is a Controller in a given readiness phase.
type notReadyController struct {
	memController
	why string
}

func (c *notReadyController) NotReady() string { return c.why }

// The control API says alive at once, not ready (503, with the phase) for
// /readyz and every other request until the daemon enforces, then ready.
func TestReadyGate(t *testing.T) {
	c := &notReadyController{why: phaseRestoring}
	h := Handler(c)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/healthz", 200, "alive"},
		{"/readyz", 503, "not ready: " + phaseRestoring},
		{"/v1/stats", 503, "not ready: " + phaseRestoring},
		{"/v1/pus", 503, "not ready"},
		{"/metrics", 503, "not ready"},
	} {
		if code, body := get(tc.path); code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("starting: GET %s = %d %q, want %d with %q", tc.path, code, body, tc.code, tc.body)
		}
	}
	c.why = ""
	for _, p := range []string{"/healthz", "/readyz", "/v1/stats", "/v1/pus"} {
		if code, body := get(p); code != 200 {
			t.Errorf("ready: GET %s = %d %q", p, code, body)
		}
	}
	c.why = phaseStopping
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "stopping") {
		t.Errorf("stopping: GET /readyz = %d %q", code, body)
	}
	// A controller with no readiness of its own is ready.
	rec := httptest.NewRecorder()
	Handler(&memController{}).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("plain controller: /readyz = %d", rec.Code)
	}
}

// SDNotify writes the state as one datagram to NOTIFY_SOCKET, a path or
// an abstract name, as systemd listens; without it, nothing.
func TestSDNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := SDNotify("READY=1"); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: sent %v, %v", sent, err)
	}
	path := filepath.Join(t.TempDir(), "notify")
	for _, name := range []string{path, "@trireme-test-notify-" + filepath.Base(t.TempDir())} {
		addr := name
		if name[0] == '@' {
			addr = "\x00" + name[1:]
		}
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		for _, state := range []string{"READY=1\nSTATUS=enforcing", "STOPPING=1"} {
			if sent, err := SDNotify(state); !sent || err != nil {
				t.Fatalf("%s: sent %v, %v", name, sent, err)
			}
			buf := make([]byte, 256)
			l.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := l.Read(buf)
			if err != nil || string(buf[:n]) != state {
				t.Fatalf("%s: systemd read %q, %v; want %q", name, buf[:n], err, state)
			}
		}
		l.Close()
	}
	t.Setenv("NOTIFY_SOCKET", "relative/path")
	if _, err := SDNotify("READY=1"); err == nil {
		t.Error("a relative NOTIFY_SOCKET: no error")
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if _, err := SDNotify("READY=1"); err == nil {
		t.Error("nobody listening: no error")
	}
}
