# aurora-bootstrap as a Terraform module: deploy/cloudformation.yaml as a stack, with
# its in-stack Custom::AuroraBootstrap, so that `terraform apply` makes the cluster's
# users in AWS itself (the launcher Lambda runs the task inside the VPC) and fails
# when they cannot be made. Nothing runs on the Terraform runner: no tool, no network
# path to the cluster, no AWS credentials beyond the provider's. A remote run (HCP
# Terraform, Atlantis) works as a local one does.
#
# Put it in the configuration that makes the cluster, after the writer instance:
#
#   module "database_users" {
#     source             = "./deploy/terraform/aurora-bootstrap"
#     depends_on         = [aws_rds_cluster_instance.writer]
#     name               = "orders-db-users"
#     image              = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.4.0"
#     cluster_identifier = aws_rds_cluster.orders.cluster_identifier
#     vpc_id             = module.vpc.vpc_id
#     subnets            = module.vpc.private_subnets
#     database_security_group_id = aws_security_group.database.id
#     ecs_cluster        = aws_ecs_cluster.jobs.name
#     iam_users          = "app_user:app_readwrite,report_user:app_readonly"
#   }
#
# What re-runs the bootstrap: a change of the image, the users, the groups, PRUNE or
# the task definition (the stack's Triggers), as for the template; a change of
# bootstrap_timeout_seconds too (ServiceTimeout). A rollback of the stack runs the old
# properties and never strands it (docs/iac.md).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

resource "aws_cloudformation_stack" "bootstrap" {
  name          = var.name
  template_body = file("${path.module}/../../cloudformation.yaml")
  capabilities  = ["CAPABILITY_IAM"]
  # The stack waits for the bootstrap; Terraform waits for the stack, a little longer.
  timeout_in_minutes = ceil(var.bootstrap_timeout_seconds / 60) + 10

  parameters = {
    Image                   = var.image
    ClusterIdentifier       = var.cluster_identifier
    Transport               = var.transport
    VpcId                   = var.vpc_id
    Subnets                 = join(",", var.subnets)
    DatabaseSecurityGroupId = var.database_security_group_id
    CredentialSource        = var.credential_source
    MasterSecretArn         = var.master_secret_arn
    IamUsers                = var.iam_users
    # Empty is the shipped default document, as the template reads it.
    GroupRoles              = var.group_roles == null ? "" : jsonencode(var.group_roles)
    Prune                   = var.prune ? "true" : "false"
    DeadlineSeconds         = tostring(var.deadline_seconds)
    EcsCluster              = var.ecs_cluster
    BootstrapOnDeploy       = "true"
    BootstrapTimeoutSeconds = tostring(var.bootstrap_timeout_seconds)
  }
}
