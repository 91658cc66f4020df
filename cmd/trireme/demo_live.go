package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/demo"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/policy"
)

// demoSubnet is the node bridge's subnet in the live demo: the target
// network of examples/policy.yaml, so the PUs keep their example addresses.
var demoSubnet = netip.MustParsePrefix("10.0.0.0/16")

// liveResults, when set (hidden flag --results), receives the rows as JSON
// for tests.
var liveResults string

// noDocker skips the Docker part.
var noDocker bool

// parseLiveConn parses "client -> server:proto/port".
func parseLiveConn(s string, hosts map[string]*demoHost) (demo.Conn, error) {
	client, rest, ok := strings.Cut(s, "->")
	if !ok {
		return demo.Conn{}, fmt.Errorf("live connection %q: want CLIENT -> SERVER:PROTO/PORT", s)
	}
	server, port, ok := strings.Cut(strings.TrimSpace(rest), ":")
	if !ok {
		return demo.Conn{}, fmt.Errorf("live connection %q: want CLIENT -> SERVER:PROTO/PORT", s)
	}
	c := demo.Conn{Client: strings.TrimSpace(client), Server: strings.TrimSpace(server)}
	pr, err := policy.ParsePortRange(strings.TrimSpace(port))
	if err != nil || pr.First != pr.Last || !pr.Protocol.HasPorts() {
		return demo.Conn{}, fmt.Errorf("live connection %q: want one tcp/PORT or udp/PORT", s)
	}
	c.Proto, c.Port = "tcp", int(pr.First)
	if pr.Protocol == ipproto.UDP {
		c.Proto = "udp"
	}
	for _, n := range []string{c.Client, c.Server} {
		if hosts[n] == nil {
			return demo.Conn{}, fmt.Errorf("live connection %q: no host %q in pus.yaml", s, n)
		}
	}
	if c.Client == c.Server {
		return demo.Conn{}, fmt.Errorf("live connection %q: a host connecting to itself", s)
	}
	return c, nil
}

func runLiveDemo(cmd *cobra.Command, dir string) (err error) {
	w := cmd.OutOrStdout()
	start := time.Now()
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	pf := filepath.Join(dir, "policy.yaml")
	s, err := policy.Load(pf)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	eng, err := policy.Compile(s)
	if err != nil {
		return err
	}
	hostList, live, err := loadLiveDemo(filepath.Join(dir, "pus.yaml"))
	if err != nil {
		return err
	}
	byName := map[string]*demoHost{}
	for i := range hostList {
		byName[hostList[i].Name] = &hostList[i]
	}
	var conns []demo.Conn
	for _, l := range live {
		c, err := parseLiveConn(l, byName)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	if len(conns) == 0 {
		return errors.New("pus.yaml has no live connections")
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "trireme live demo: %d real connections between the hosts of %s under %s\n\n",
		len(conns), filepath.Join(dir, "pus.yaml"), pf)
	dockerOK, dockerWhy := demo.DockerAvailable(bin)
	if noDocker {
		dockerOK, dockerWhy = false, "--no-docker"
	}
	env, err := demo.New(ctx, demo.Options{Binary: bin, Policy: pf, Subnet: demoSubnet, Progress: w, Docker: dockerOK})
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted; what the demo had set up is removed")
		}
		return err
	}
	env.Excluded = eng.Set().ExcludedNetworks
	defer func() {
		t := time.Now()
		if cerr := env.Close(); cerr != nil {
			fmt.Fprintf(w, "  ! teardown: %v\n", cerr)
		} else {
			fmt.Fprintf(w, "  • torn down: daemon stopped and purged, namespaces deleted (%.1fs)\n", time.Since(t).Seconds())
		}
		fmt.Fprintf(w, "\ndemo finished in %.1fs\n", time.Since(start).Seconds())
		if ctx.Err() != nil {
			err = errors.New("interrupted; what the demo had set up is removed")
		}
	}()

	// The hosts the connections need, with the ports they serve.
	hosts := map[string]*demo.Host{}
	var order []string
	for _, c := range conns {
		for _, n := range []string{c.Client, c.Server} {
			if hosts[n] != nil {
				continue
			}
			dh := byName[n]
			h := &demo.Host{Name: n, Addr: dh.addr, PU: dh.pu}
			if dh.pu {
				h.Labels = identity.UserLabels(dh.Tags) // system tags come from the daemon
			}
			hosts[n] = h
			order = append(order, n)
		}
		h := hosts[c.Server]
		ports := &h.TCP
		if c.Proto == "udp" {
			ports = &h.UDP
		}
		if !containsInt(*ports, c.Port) {
			*ports = append(*ports, c.Port)
		}
	}
	for _, n := range order {
		h := hosts[n]
		if err := env.AddHost(h); err != nil {
			return err
		}
		if h.PU {
			pu, err := env.Attach(h)
			if err != nil {
				return fmt.Errorf("attach %s: %w", n, err)
			}
			env.Progressf("PU %-12s %-12s attached, tags %s", n, h.Addr, identity.NewTags(pu.Tags))
		} else {
			kind := "external host, no enforcer"
			switch {
			case eng.IsExcluded(h.Addr):
				kind = "in the excluded networks"
			case eng.IsTarget(h.Addr):
				kind = "in the target networks, no enforcer"
			}
			env.Progressf("host %-10s %-12s (%s)", n, h.Addr, kind)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	for _, n := range order {
		if h := hosts[n]; len(h.TCP)+len(h.UDP) > 0 {
			if err := env.Serve(ctx, h); err != nil {
				return err
			}
		}
	}
	env.Progressf("probe servers listening; connecting (%v timeout each)...", demo.ProbeTimeout)
	t := time.Now()
	rows, err := env.Connect(ctx, conns, 8)
	if err != nil {
		return err
	}
	if err := env.Explain(rows, 3*time.Second); err != nil {
		return err
	}
	env.Progressf("%d connections made in %.1fs", len(rows), time.Since(t).Seconds())
	fmt.Fprintln(w)
	printLiveTable(w, rows)
	fmt.Fprintln(w)
	res := demoResults{Live: rows}
	if res.Run, err = runExample(ctx, w, env, bin); err != nil {
		return fmt.Errorf("trireme run example: %w", err)
	}
	switch {
	case !dockerOK:
		res.DockerSkipped = dockerWhy
	case env.DockerErr != nil:
		res.DockerSkipped = "the private Docker engine did not start: " + env.DockerErr.Error()
	}
	if res.DockerSkipped != "" {
		fmt.Fprintf(w, "Docker part skipped: %s\n\n", res.DockerSkipped)
	} else if res.Docker, err = dockerExample(ctx, w, env, byName); err != nil {
		return fmt.Errorf("docker example: %w", err)
	}
	if liveResults != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(liveResults, b, 0o644); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func containsInt(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// printLiveTable prints who could connect to whom and why.
func printLiveTable(w io.Writer, rows []demo.Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT -> SERVER:PORT\tOBSERVED\tDECISION\tREASON\tDECIDED BY (flow log)")
	for _, r := range rows {
		obs := r.Observed
		switch r.Observed {
		case demo.Connected:
			obs = "connected (" + r.Answer + ")"
		case demo.Refused:
			obs = "refused by RST"
		}
		decision, reason, by := strings.ToUpper(r.Decision), r.Reason, ""
		switch {
		case r.Decision == "" && r.Records == 0:
			decision, reason, by = "-", "-", "no record: excluded network, trireme bypassed"
		case r.Decision == "allow":
			by = strings.Join(r.Rules, " + ")
		default:
			by = r.Conn.Server + "'s ingress"
			if r.Side == "client" {
				by = r.Conn.Client + "'s egress"
			}
			switch {
			case len(r.Rules) > 0:
				by += ": " + strings.Join(r.Rules, ", ")
			case r.Reason == "policy-denied":
				by += ": no rule allows it"
			}
		}
		if reason == "" {
			reason = "-"
		}
		if len(r.ObservedRules) > 0 {
			by += " (observed: " + strings.Join(r.ObservedRules, ", ") + ")"
		}
		fmt.Fprintf(tw, "%s -> %s:%s/%d\t%s\t%s\t%s\t%s\n", r.Conn.Client, r.Conn.Server, r.Conn.Proto, r.Conn.Port, obs, decision, reason, by)
	}
	tw.Flush()
	counts := map[string]int{}
	for _, r := range rows {
		counts[r.Observed]++
	}
	var parts []string
	for _, o := range demoOutcomes {
		if counts[o] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[o], o))
		}
	}
	fmt.Fprintf(w, "%s.\n", strings.Join(parts, ", "))
}

// runExample shows `trireme run`: a command started as a new PU (a
// namespace the daemon creates on the node bridge, with the given labels),
// removed when the command ends.
func runExample(ctx context.Context, w io.Writer, env *demo.Env, bin string) ([]demo.Row, error) {
	if c, _, err := rootCmd.Find([]string{"run"}); err != nil || c == rootCmd {
		fmt.Fprintln(w, "(this build has no `trireme run`: skipping its example)")
		return nil, nil
	}
	fmt.Fprintln(w, "trireme run: a command as a PU labelled app=reports (the daemon makes its namespace, removes it when the command exits)")
	fmt.Fprintln(w)
	var rows []demo.Row
	for i, c := range []demo.Conn{
		{Client: "reports (run)", Server: "db", Proto: "tcp", Port: 5432},
		{Client: "reports (run)", Server: "api", Proto: "tcp", Port: 443},
	} {
		server := env.Addr(c.Server)
		target := fmt.Sprintf("%s:%d", server, c.Port)
		fmt.Fprintf(w, "  $ trireme run --label app=reports -- trireme probe connect --tcp %s    # %s\n", target, c.Server)
		since := time.Now()
		var out strings.Builder
		cmd := exec.CommandContext(ctx, bin, "run", "--socket", env.Socket(), "--label", "app=reports",
			"--name", env.RunName(i), "--",
			bin, "probe", "connect", "--tcp", target, "--timeout", demo.ProbeTimeout.String())
		cmd.Stdout, cmd.Stderr = &out, &out
		// Interrupted: trireme run passes SIGTERM on and removes its PU.
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 5 * time.Second
		err := cmd.Run()
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
		code := cmd.ProcessState.ExitCode()
		if err != nil && code <= 0 {
			return rows, fmt.Errorf("trireme run: %v: %s", err, out.String())
		}
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			fmt.Fprintf(w, "    %s\n", l)
		}
		fmt.Fprintf(w, "    (exit %d)\n", code)
		observed := demo.Failed
		if code >= 0 && code < len(demoOutcomes) {
			observed = demoOutcomes[code]
		}
		answer := ""
		if code == 0 {
			answer = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out.String()), "ok"))
		}
		rows = append(rows, env.NewRunRow(c, observed, answer, since))
	}
	if err := env.Explain(rows, 3*time.Second); err != nil {
		return rows, err
	}
	fmt.Fprintln(w)
	printLiveTable(w, rows)
	fmt.Fprintln(w)
	return rows, nil
}

// dockerExample runs three labelled containers (frontend, web, db of
// pus.yaml) on the node bridge and connects them; each client runs in its
// container's network namespace.
func dockerExample(ctx context.Context, w io.Writer, env *demo.Env, byName map[string]*demoHost) ([]demo.Row, error) {
	fmt.Fprintln(w, "Docker: three labelled containers (image FROM scratch holding the static trireme binary) under the same policy")
	fmt.Fprintln(w)
	conns := []demo.Conn{
		{Client: "c-frontend", Server: "c-web", Proto: "tcp", Port: 80},
		{Client: "c-web", Server: "c-db", Proto: "tcp", Port: 5432},
		{Client: "c-frontend", Server: "c-db", Proto: "tcp", Port: 5432},
		{Client: "c-db", Server: "c-frontend", Proto: "tcp", Port: 443},
		{Client: "frontend", Server: "c-web", Proto: "tcp", Port: 80},
		{Client: "internet", Server: "c-frontend", Proto: "tcp", Port: 443},
		{Client: "internet", Server: "c-db", Proto: "tcp", Port: 5432},
	}
	ports := map[string][]int{}
	for _, c := range conns {
		if !containsInt(ports[c.Server], c.Port) {
			ports[c.Server] = append(ports[c.Server], c.Port)
		}
	}
	names := []string{"c-frontend", "c-web", "c-db"}
	for _, n := range names {
		labels := identity.UserLabels(byName[strings.TrimPrefix(n, "c-")].Tags)
		if err := env.RunContainer(ctx, &demo.Host{Name: n, Labels: labels, TCP: ports[n]}); err != nil {
			return nil, err
		}
	}
	// The daemon learns of the containers from the engine's events.
	pus, err := env.WaitPUs(ctx, "docker", len(names), 15*time.Second)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		for _, pu := range pus {
			if strings.HasSuffix(pu.Name, n) {
				tags := map[string]string{}
				for k, v := range pu.Tags {
					if k == monitor.TagID && len(v) > 12 {
						v = v[:12] + "…"
					}
					tags[k] = v
				}
				env.Progressf("container %-10s %-12s policed, tags %s", n, env.Addr(n), identity.NewTags(tags))
			}
		}
	}
	rows, err := env.Connect(ctx, conns, 8)
	if err != nil {
		return nil, err
	}
	if err := env.Explain(rows, 3*time.Second); err != nil {
		return nil, err
	}
	fmt.Fprintln(w)
	printLiveTable(w, rows)
	fmt.Fprintln(w)
	return rows, nil
}

// demoOutcomes: `trireme probe connect` exit codes.
var demoOutcomes = [...]string{demo.Connected, demo.Refused, demo.Reset, demo.TimedOut, demo.Failed}

// demoResults is what --results receives.
type demoResults struct {
	Live   []demo.Row `json:"live"`
	Run    []demo.Row `json:"run"`
	Docker []demo.Row `json:"docker"`
	// DockerSkipped says why the Docker part did not run.
	DockerSkipped string `json:"dockerSkipped,omitempty"`
}
