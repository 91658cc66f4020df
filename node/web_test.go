package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

const webToken = "0123456789abcdef-web-token"

// webPort is where the test daemon's page listens, inside its node
// namespace (the namespace is the test's own: no port clash).
const webPort = "127.0.0.1:8090"

// newWebScene is the flow scene with the page on TCP, reached from the
// host through a forwarder into the node namespace; it returns the
// forwarder's URL.
func newWebScene(t *testing.T) (*flowScene, string) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "web-token")
	if err := os.WriteFile(tokenFile, []byte(webToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newFlowScene(t, fmt.Sprintf("observe: {web: {listen: %q, tokenFile: %q}}\n", webPort, tokenFile))
	// A fresh namespace's loopback is down; the daemon listens on it.
	if out, err := s.d.Node.Run(context.Background(), "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	return s, "http://" + forwardInto(t, s.d.Node) + "/"
}

// forwardInto listens on the host's loopback and forwards each connection
// to webPort in the node namespace.
func forwardInto(t *testing.T, n *testenv.Node) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			var up net.Conn
			err = n.Do(func() (err error) { up, err = net.DialTimeout("tcp", webPort, 5*time.Second); return })
			if err != nil {
				t.Logf("forwarder: %v", err)
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(c, up); c.Close(); up.Close() }()
		}
	}()
	return l.Addr().String()
}

// TestWebAccess: the page's TCP listener answers only with the token, is
// read-only, serves none of the control API, and refuses bad parameters;
// on the control socket the page is under /ui/.
func TestWebAccess(t *testing.T) {
	s, base := newWebScene(t)
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, bearer string, cookie *http.Cookie) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, tc := range []struct {
		method, path, bearer string
		want                 int
	}{
		{"GET", "", "", http.StatusUnauthorized},
		{"GET", "api/map", "", http.StatusUnauthorized},
		{"GET", "api/map", "wrong-token-wrong-token", http.StatusUnauthorized},
		{"GET", "?token=wrong", "", http.StatusUnauthorized},
		{"GET", "api/map?token=" + webToken[:len(webToken)-1], "", http.StatusUnauthorized},
		{"GET", "", webToken, http.StatusOK},
		{"GET", "api/map", webToken, http.StatusOK},
		{"GET", "vendor/cytoscape.min.js", webToken, http.StatusOK},
		{"POST", "api/map", webToken, http.StatusMethodNotAllowed},
		{"DELETE", "api/map", webToken, http.StatusMethodNotAllowed},
		{"GET", "v1/pus", webToken, http.StatusNotFound},
		{"GET", "v1/stats", webToken, http.StatusNotFound},
		{"GET", "api/map?window=forever", webToken, http.StatusBadRequest},
		{"GET", "api/map?window=-5m", webToken, http.StatusBadRequest},
		{"GET", "api/map?colour=red", webToken, http.StatusBadRequest},
		{"GET", "api/map?group=a&group=b", webToken, http.StatusBadRequest},
		{"GET", "api/flows", webToken, http.StatusBadRequest},
		{"GET", "api/flows?node=" + strings.Repeat("x", 600), webToken, http.StatusBadRequest},
		{"GET", "api/policy?pu=nosuch", webToken, http.StatusNotFound},
		{"GET", "../../../etc/passwd", webToken, http.StatusTemporaryRedirect}, // to /etc/passwd:
		{"GET", "etc/passwd", webToken, http.StatusNotFound},
	} {
		resp, body := do(tc.method, tc.path, tc.bearer, nil)
		if resp.StatusCode != tc.want {
			t.Errorf("%s /%s (bearer %q): %d %.200s, want %d", tc.method, tc.path, tc.bearer, resp.StatusCode, body, tc.want)
		}
		if tc.want == http.StatusOK && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("%s /%s: no content security policy", tc.method, tc.path)
		}
	}
	// ?token= once: a cookie and a redirect to the address without it.
	resp, _ := do("GET", "?token="+webToken, "", nil)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Value == webToken {
			cookie = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || strings.Contains(resp.Header.Get("Location"), "token") {
		t.Fatalf("?token=: %d, location %q, cookie %+v", resp.StatusCode, resp.Header.Get("Location"), cookie)
	}
	if resp, body := do("GET", "api/map", "", cookie); resp.StatusCode != http.StatusOK || !strings.Contains(body, s.webN) {
		t.Errorf("with the cookie: %d %.300s", resp.StatusCode, body)
	}

	// The control socket serves the page under /ui/ without a token (the
	// socket is root's), read-only too.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", s.d.Socket)
	}}}
	for path, want := range map[string]int{"/ui/": 200, "/ui/app.js": 200, "/ui/api/map?group=app": 200, "/ui/api/map?window=0s": 400} {
		resp, err := hc.Get("http://trireme" + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("socket GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if resp, err := hc.Post("http://trireme/ui/api/map", "application/json", strings.NewReader("{}")); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("socket POST /ui/api/map: %v %v", resp.StatusCode, err)
	}
}

// browserStart bounds Chromium's start (it prints its DevTools address),
// and stepLimit each step of the test in the browser: both far above what
// a quiet machine needs (about a second), so that a loaded one passes too;
// the one timing the page promises (a denied connection shown within 2 s)
// is measured on its own.
const (
	browserStart = 2 * time.Minute
	stepLimit    = time.Minute
)

// TestWebPage loads the page in a real headless Chromium against a live
// daemon with PUs: the map shows every PU (grouped by their app tag) and
// an edge per client and server, coloured by verdict; a denied connection
// made while the page is open appears within 2 s; clicking an edge and a
// PU shows their flows and the PU's effective policy. A screenshot is saved
// ($TRIREME_WEB_SCREENSHOT, or the test's log names it).
func TestWebPage(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("this test needs Debian's chromium (make deps installs it)")
	}
	s, base := newWebScene(t)
	s.connect(t)
	// The records are in the ring before the page loads.
	s.waitFlows(t, hasVerdicts("allowed", "rejected", "denied"), "--pu", s.webN, "--proto", "tcp")

	// On a loaded machine Chromium can take longer to start than
	// chromedp's 20 s default for printing its DevTools address.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1400, 900), chromedp.Flag("disable-dev-shm-usage", true), chromedp.WSURLReadTimeout(browserStart))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	// The browser lives as long as the context of its first Run: one
	// without a deadline, each step below bounded on its own (a step's
	// budget does not pay for the browser's start).
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	started := time.Now()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	t.Logf("chromium started in %v", time.Since(started).Round(time.Millisecond))
	// step runs f with a context bounded by limit.
	step := func(limit time.Duration, f func(ctx context.Context) error) error {
		sctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		return f(sctx)
	}
	var mu sync.Mutex
	var pageErrors []string
	err = chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			pageErrors = append(pageErrors, "exception: "+e.ExceptionDetails.Text)
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.EntryLevelError {
				pageErrors = append(pageErrors, "console: "+e.Entry.Text)
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				pageErrors = append(pageErrors, "console.error")
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := step(stepLimit, func(ctx context.Context) error { _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); return err }); err != nil {
		t.Fatal(err)
	}
	if err := step(stepLimit, func(ctx context.Context) error { return chromedp.Do(ctx, chromedp.Navigate(base+"?token="+webToken)) }); err != nil {
		t.Fatal(err)
	}
	// eval runs expr in the page and decodes its value (as JSON) into out.
	eval := func(expr string, out any) {
		t.Helper()
		var s string
		err := step(stepLimit, func(ctx context.Context) (err error) {
			s, err = chromedp.Run(ctx, chromedp.Evaluate[string]("JSON.stringify(("+expr+"))"))
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if err := json.Unmarshal([]byte(s), out); err != nil {
			t.Fatalf("%s: %v: %s", expr, err, s)
		}
	}
	// waitFor polls a JS condition.
	waitFor := func(what, expr string, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			var ok bool
			err := step(stepLimit, func(ctx context.Context) (err error) {
				ok, err = chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
				return err
			})
			if err == nil && ok {
				return time.Since(start)
			}
			if time.Since(start) > limit {
				var status string
				step(stepLimit, func(ctx context.Context) (err error) {
					status, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('status') ? document.getElementById('status').textContent : document.body.innerText`))
					return err
				})
				t.Fatalf("the page did not show %s within %v (status %q, %v)", what, limit, status, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The page is ready once it shows the PUs (its first map laid out).
	took := waitFor("the PUs", `!!window.cy && cy.nodes('[kind = "pu"]').length >= 4`, stepLimit)
	t.Logf("the page showed the PUs %v after it was asked for", took.Round(time.Millisecond))

	// The token left the address bar; the page runs without errors (the
	// content security policy refuses inline code: none is needed).
	var loc string
	eval(`location.href`, &loc)
	if strings.Contains(loc, "token") {
		t.Errorf("the token stayed in the address: %s", loc)
	}

	// Nodes: every PU, by name, in its app group.
	var nodes []struct{ ID, Label, Kind, Parent string }
	eval(`cy.nodes().map(n => ({id: n.id(), label: n.data('label'), kind: n.data('kind'), parent: n.data('parent') || ''}))`, &nodes)
	puID := map[string]string{}
	for _, want := range []struct{ name, group string }{{s.frontN, "frontend"}, {s.webN, "web"}, {s.devN, "dev"}, {s.rogueN, "rogue"}} {
		found := false
		for _, n := range nodes {
			if n.Label == want.name && n.Kind == "pu" {
				found = true
				puID[want.name] = n.ID
				if n.Parent != "group:"+want.group {
					t.Errorf("PU %s is in %q, want group:%s", want.name, n.Parent, want.group)
				}
			}
		}
		if !found {
			t.Errorf("no node for PU %s: %+v", want.name, nodes)
		}
	}
	// Edges: one per client and server, with the verdicts' counts.
	edgeOf := func(from, to string) (allowed, refused int, colour string, ok bool) {
		var e struct {
			OK                        bool
			Allowed, Denied, Rejected int
			Colour                    string
		}
		eval(fmt.Sprintf(`(() => { const e = cy.edges().filter(e => e.source().id() === %q && e.target().id() === %q); return e.length ? {ok: true, allowed: e.data('allowed'), denied: e.data('denied'), rejected: e.data('rejected'), colour: e.data('colour')} : {ok: false}; })()`,
			puID[from], puID[to]), &e)
		return e.Allowed, e.Denied + e.Rejected, e.Colour, e.OK
	}
	if a, r, c, ok := edgeOf(s.frontN, s.webN); !ok || a < 1 || r != 0 || c != "#2e9e44" {
		t.Errorf("frontend -> web edge: ok %v allowed %d refused %d colour %s", ok, a, r, c)
	}
	if a, r, c, ok := edgeOf(s.devN, s.webN); !ok || a != 0 || r < 1 || c != "#d64545" {
		t.Errorf("dev -> web edge: ok %v allowed %d refused %d colour %s", ok, a, r, c)
	}
	if a, r, _, ok := edgeOf(s.rogueN, s.webN); !ok || a != 0 || r < 1 {
		t.Errorf("rogue -> web edge: ok %v allowed %d refused %d", ok, a, r)
	}
	if _, _, _, ok := edgeOf(s.webN, s.frontN); ok {
		t.Error("an edge web -> frontend: no such connection was made")
	}

	// A denied connection made now (rogue -> frontend: the frontend admits
	// nothing) appears on the open page within 2 s of its record: the
	// record's time (written into the daemon's ring) to the moment the
	// page put it into its map, both read from the machine's clock, so
	// that neither the test's polling of the daemon nor its round trips to
	// the browser count.
	if _, _, _, ok := edgeOf(s.rogueN, s.frontN); ok {
		t.Fatal("an edge rogue -> frontend before the connection was made")
	}
	eval(fmt.Sprintf(`(() => { window.deniedShownAt = 0; cy.on('add data', 'edge', e => { const d = e.target; if (!window.deniedShownAt && d.source().id() === %q && d.target().id() === %q && d.data('denied') > 0) window.deniedShownAt = Date.now(); }); return true; })()`,
		puID[s.rogueN], puID[s.frontN]), new(bool))
	s.rogue.Echo(netip.AddrPortFrom(s.front.Addr, 8080), "x", 300*time.Millisecond)
	var recorded time.Time
	s.waitFlows(t, func(fs []node.Flow) bool {
		for _, f := range fs {
			if f.Client.Addr() == s.rogue.Addr && (recorded.IsZero() || f.EndTime.Before(recorded)) {
				recorded = f.EndTime
			}
		}
		return !recorded.IsZero()
	}, "--pu", s.frontN, "--verdict", "denied", "--proto", "tcp")
	waitFor("the new denied connection", `window.deniedShownAt > 0`, stepLimit)
	var shownAt int64
	eval(`window.deniedShownAt`, &shownAt)
	after := time.UnixMilli(shownAt).Sub(recorded)
	t.Logf("the denied connection appeared on the page %v after its record", after.Round(time.Millisecond))
	if after > 2*time.Second {
		t.Errorf("the denied connection appeared on the page %v after its record, want within 2 s", after.Round(time.Millisecond))
	}

	// Click the dev -> web edge: its flows, with the rule that rejected.
	eval(fmt.Sprintf(`cy.edges().filter(e => e.source().id() === %q && e.target().id() === %q).emit('tap'), true`, puID[s.devN], puID[s.webN]), new(bool))
	waitFor("the edge's flows", `document.getElementById('details').textContent.includes('no-dev-clients') && document.getElementById('details').textContent.includes('rejected')`, 10*time.Second)
	// Click the web PU: its effective policy and flows.
	eval(fmt.Sprintf(`cy.getElementById(%q).emit('tap'), true`, puID[s.webN]), new(bool))
	waitFor("the PU's policy", `(t => t.includes('effective policy') && t.includes('policy web') && t.includes('from-frontend') && t.includes('recent flows'))(document.getElementById('details').textContent)`, 10*time.Second)

	var png []byte
	err = step(stepLimit, func(ctx context.Context) (err error) {
		png, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(png) < 10<<10 || string(png[1:4]) != "PNG" {
		t.Errorf("the screenshot is %d bytes", len(png))
	}
	shot := os.Getenv("TRIREME_WEB_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(os.TempDir(), "trireme-web-"+testenv.Suffix()+".png")
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)

	mu.Lock()
	defer mu.Unlock()
	if len(pageErrors) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(pageErrors, "\n"))
	}
}

// TestWebUIProxy: `trireme ui` serves the page of the daemon's socket on a
// local address, to the token it prints only, read-only, and nothing of the
// control API.
func TestWebUIProxy(t *testing.T) {
	s := newFlowScene(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Binary(t), "ui", "--socket", s.d.Socket)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(strings.TrimSpace(line))
	if err != nil || u.Query().Get("token") == "" {
		t.Fatalf("trireme ui printed %q", line)
	}
	token := u.Query().Get("token")
	base := "http://" + u.Host
	hc := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(method, path, bearer string) (int, string) {
		req, _ := http.NewRequest(method, base+path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		method, path, bearer string
		want                 int
	}{
		{"GET", "/", "", http.StatusUnauthorized},
		{"GET", "/api/map", "not-the-token-at-all", http.StatusUnauthorized},
		{"GET", "/?token=" + token, "", http.StatusSeeOther},
		{"GET", "/", token, http.StatusOK},
		{"GET", "/api/map", token, http.StatusOK},
		{"POST", "/api/map", token, http.StatusMethodNotAllowed},
		{"GET", "/v1/pus", token, http.StatusNotFound},
		{"GET", "/../v1/pus", token, http.StatusNotFound},
		{"GET", "/metrics", token, http.StatusNotFound},
	} {
		code, body := get(tc.method, tc.path, tc.bearer)
		if code != tc.want {
			t.Errorf("%s %s: %d %.200s, want %d", tc.method, tc.path, code, body, tc.want)
		}
		if tc.path == "/api/map" && code == http.StatusOK && !strings.Contains(body, s.webN) {
			t.Errorf("the map lacks the PU %s: %.300s", s.webN, body)
		}
	}
}
