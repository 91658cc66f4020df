// Package deploy holds the deployment files (deploy/kubernetes: the
// manifests and the image's Dockerfile) and their tests: the manifests
// validated by a real API server, the RBAC they grant checked, the
// ConfigMap's config parsed by the daemon's parser, and the image built by
// a Docker engine. It has no code.
package deploy
