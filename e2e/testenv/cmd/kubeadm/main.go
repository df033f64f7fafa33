// Command kubeadm is the upstream kubeadm, built from k8s.io/kubernetes/cmd/kubeadm/app,
// for the kind node image (e2e/kind/node-image), where kind runs it.
package main

import (
	"k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
)

func main() {
	kubeadmerrors.HandleError(app.Run())
}
