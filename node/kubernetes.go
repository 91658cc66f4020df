package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/k8s/agent"
	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/resolver"
)

// The Kubernetes source (config section `kubernetes:`): the node agent of
// package k8s/agent feeds the daemon the translated NetworkPolicies (its
// policy, instead of a policy file) and this node's pods (PUs with ID
// "pod-<uid>"). This file is the daemon's side of agent.Enforcer.

// Kubernetes configures the Kubernetes source.
type Kubernetes struct {
	Enabled bool `yaml:"enabled,omitempty"`
	// Kubeconfig is a kubeconfig file; empty means the in-cluster
	// configuration (the pod's service account).
	Kubeconfig string `yaml:"kubeconfig"`
	// NodeName is this node's name in the cluster (spec.nodeName of its
	// pods); default: the NODE_NAME environment variable (the DaemonSet
	// sets it from spec.nodeName), else the config's node.
	NodeName string `yaml:"nodeName"`
	// PodNetworks are the cluster's pod CIDRs, the policy's target
	// networks. Default: each pod's address.
	PodNetworks Prefixes `yaml:"podNetworks"`
	// NetnsDir is where the CNI plugin names pods' network namespaces
	// (default /var/run/netns).
	NetnsDir string `yaml:"netnsDir"`
}

// kubernetesPolicyFile keeps the last translated policy in the state
// directory, so that a restart enforces what the node last knew until the
// agent has synced (also when the API server is unreachable then).
const kubernetesPolicyFile = "kubernetes-policy.yaml"

// kubernetesNodeName resolves the node's name in the cluster.
func (k *Kubernetes) nodeName(cfg *Config) string {
	if k.NodeName != "" {
		return k.NodeName
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	return cfg.Node
}

// loadKubernetesPolicy returns the policy source of a Kubernetes node: the
// last translated policy saved in the state directory, or an empty set
// (nothing allowed) before the first sync.
func loadKubernetesPolicy(cfg *Config, opts resolver.FileOptions) (*resolver.Pushed, error) {
	initial := &policy.Set{}
	path := filepath.Join(cfg.StateDir, kubernetesPolicyFile)
	if data, err := os.ReadFile(path); err == nil {
		s, err := policy.Parse(path, data)
		if err != nil {
			opts.Logger.Warn("ignoring the saved Kubernetes policy: the agent translates it again once synced", "err", err)
		} else {
			initial = s
		}
	}
	return resolver.NewPushed("kubernetes", initial, opts)
}

// newKubernetesAgent makes the node agent (nothing runs yet).
func newKubernetesAgent(d *Daemon) (*agent.Agent, error) {
	kc := d.cfg.Kubernetes
	var rc *rest.Config
	var err error
	if kc.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kc.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	rc.UserAgent = "trireme/" + d.cfg.Node
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	d.log.Info("kubernetes source", "node", kc.nodeName(d.cfg), "server", rc.Host)
	return agent.New(agent.Config{Client: client, NodeName: kc.nodeName(d.cfg), Enforcer: k8sEnforcer{d}, Log: d.log,
		Translate: k8s.Options{TargetNetworks: kc.PodNetworks}, NetnsDir: kc.NetnsDir})
}

// startKubernetes runs the node agent until the daemon stops.
func (d *Daemon) startKubernetes() {
	done := d.k8s.Run(d.ctx)
	d.wg.Add(1)
	go func() { defer d.wg.Done(); <-done }()
}

// k8sEnforcer is the daemon as the agent's Enforcer.
type k8sEnforcer struct{ d *Daemon }

var _ agent.Enforcer = k8sEnforcer{}

func (k k8sEnforcer) SetPolicy(set *policy.Set) error {
	d := k.d
	if err := d.kpol.Put(set); err != nil {
		return err
	}
	text, err := k8s.MarshalSet(set)
	if err == nil {
		err = writeAtomic(filepath.Join(d.cfg.StateDir, kubernetesPolicyFile), text)
	}
	if err != nil {
		d.log.Warn("saving the Kubernetes policy for the next start", "err", err)
	}
	return nil
}

func (k k8sEnforcer) Pods() map[string]map[string]string {
	out := map[string]map[string]string{}
	k.d.pus.each(func(p *livePU) {
		if strings.HasPrefix(p.info.ID, agent.IDPrefix) {
			out[p.info.ID] = p.info.Tags
		}
	})
	return out
}

func (k k8sEnforcer) AttachPod(pod agent.PodPU) error {
	d := k.d
	mp, err := monitor.NetnsPU(d.log, monitor.KindNetns, pod.Namespace+"/"+pod.Name, pod.NetNS, nil)
	if err != nil {
		return err
	}
	if mp.HostVeth == "" {
		return fmt.Errorf("%w: its namespace %s has no veth whose peer is on this node (CNIs whose pods are not on a veth are not supported)", ErrInvalid, pod.NetNS)
	}
	mp.ID = pod.ID
	// Exactly the pod's identity, as `trireme k8s translate` makes it.
	mp.Tags = identity.NewTags(pod.Tags)
	_, err = d.addPU(mp, false, true)
	return err
}

// RetagPod changes a pod's tags in place: its TAPs, steering and flows
// stay; new connections carry the new identity; established ones are
// judged again when onPolicyChange is reset.
func (k k8sEnforcer) RetagPod(id string, tags map[string]string) error {
	d := k.d
	d.changes.Lock()
	defer d.changes.Unlock()
	p, ok := d.pus.get(id)
	if !ok {
		return fmt.Errorf("PU %s: %w", id, ErrNotFound)
	}
	if !d.enf.SetTags(p.dp, identity.NewTags(tags)) {
		return fmt.Errorf("PU %s: %w", id, ErrNotFound)
	}
	d.pus.setTags(id, tags)
	d.savePU(p)
	if d.cfg.OnPolicyChange == PolicyChangeReset {
		var out dataplane.Output
		n := d.enf.Reevaluate(time.Now(), &out)
		d.frames.sendInjected(&out)
		d.queueNotes(out.Notes)
		if n > 0 {
			d.log.Info("reset flows the new tags deny", "pu", id, "flows", n)
		}
	}
	return nil
}

func (k k8sEnforcer) DetachPod(id string) error {
	err := k.d.removePU(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// setTags replaces the tags of the PU with this ID.
func (r *puRegistry) setTags(id string, tags map[string]string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.byID[id]
	if ok {
		p.info.Tags = tags
	}
	return ok
}

// KubernetesStatus is the Kubernetes source's state in Stats.
type KubernetesStatus = agent.Status
