output "service_token" {
  description = "The launcher, for Custom::AuroraBootstrap resources of other stacks."
  value       = aws_cloudformation_stack.bootstrap.outputs["ServiceToken"]
}

output "task_definition_arn" {
  description = "For `aurora-bootstrap ecs-run --task-definition`."
  value       = aws_cloudformation_stack.bootstrap.outputs["TaskDefinitionArn"]
}

output "task_security_group_id" {
  value = aws_cloudformation_stack.bootstrap.outputs["TaskSecurityGroupId"]
}
