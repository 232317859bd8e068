variable "name" {
  type        = string
  description = "The stack's name (its log group, task definition family and roles are named after it)."
}

variable "image" {
  type        = string
  description = "The job's image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.4.0."
}

variable "cluster_identifier" {
  type        = string
  description = "The Aurora cluster's identifier, lower case (it need not exist yet when the stack is planned)."
}

variable "transport" {
  type        = string
  default     = "postgres"
  description = "postgres (a connection, from subnets that reach the writer) or data-api (the RDS Data API over HTTPS: any VPC that reaches the AWS APIs; a secret-based master)."
  validation {
    condition     = contains(["postgres", "data-api"], var.transport)
    error_message = "transport must be postgres or data-api."
  }
}

variable "vpc_id" {
  type = string
}

variable "subnets" {
  type        = list(string)
  description = "The task's subnets: they must reach the AWS APIs, S3 and, with transport postgres, the cluster."
}

variable "database_security_group_id" {
  type        = string
  default     = ""
  description = "The cluster's security group: the stack adds the rule that admits the task."
}

variable "credential_source" {
  type        = string
  default     = "managed-secret"
  description = "managed-secret (the cluster's RDS-managed secret, by its tag), secret-arn, ecs-secret or iam."
  validation {
    condition     = contains(["managed-secret", "secret-arn", "ecs-secret", "iam"], var.credential_source)
    error_message = "credential_source must be managed-secret, secret-arn, ecs-secret or iam."
  }
}

variable "master_secret_arn" {
  type        = string
  default     = ""
  description = "The master secret's ARN, with secret-arn and ecs-secret."
}

variable "iam_users" {
  type        = string
  description = "IAM_USERS: name[:role...] comma-separated."
}

variable "group_roles" {
  type        = any
  default     = null
  description = "GROUP_ROLES as an object (null: the shipped default)."
}

variable "prune" {
  type    = bool
  default = false
}

variable "deadline_seconds" {
  type    = number
  default = 300
}

variable "ecs_cluster" {
  type        = string
  description = "The ECS cluster (its name) the bootstrap task runs in."
}

variable "bootstrap_timeout_seconds" {
  type        = number
  default     = 900
  description = "The resource's ServiceTimeout (at most 3,600): the run's deadline ends 120 s before it."
  validation {
    condition     = var.bootstrap_timeout_seconds >= 180 && var.bootstrap_timeout_seconds <= 3600
    error_message = "bootstrap_timeout_seconds must be 180 to 3600: a task's start and a run of a minute."
  }
}
